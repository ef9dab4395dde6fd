//! The message relay between one client and its backend, as a pure state
//! machine over byte buffers (no sockets), so every protocol path is unit
//! testable. Fast path: frames are copied whole after a look at their tag;
//! only Q/P/B/D/E/C/S from clients and T/D/1/2/3/n/C/s/I/E/Z from the
//! backend are looked into, and DataRows of results without a protected
//! column are never decoded.

use std::sync::Arc;

use bytes::{Buf as _, BytesMut};

use super::registry::{
    ColumnMark, DescribeTarget, Expect, Pending, Portal, Registry, RowMarks, Statement,
};
use crate::metrics::SessionMetrics;
use crate::protocol::frame::frame_len;
use crate::protocol::{FrameError, PgError, ProtocolError, messages};
use crate::rewrite::{self, Classifier, Plan, ProtectedColumns, RowHook};

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The backend answered something the response queue did not expect.
    /// Attribution of rows to statements can no longer be trusted, and with
    /// protected columns that could mean returning ciphertext as data, so
    /// the session ends (fail closed).
    #[error("byokpg: lost track of the backend's responses ({0})")]
    Desync(String),
    #[error("{}", .0.message)]
    Refused(PgError),
}

/// What the session needs from the current configuration, per call.
pub struct Ctx<'a> {
    pub classifier: &'a Classifier,
    pub protected: &'a ProtectedColumns,
    pub row_hook: Option<&'a dyn RowHook>,
    pub metrics: &'a SessionMetrics,
}

/// Name of the backend statement byokpg uses to raise a refusal in place of
/// a client's statement (see [`Relay::refuse_extended`]).
const REFUSAL_STATEMENT: &[u8] = b"byokpg_refused";

#[derive(Debug)]
pub struct Relay {
    pub registry: Registry,
    pending: Pending,
    /// Marks of the current result inside a simple query.
    simple_marks: Option<Arc<RowMarks>>,
    /// Status byte of the last ReadyForQuery: `I`, `T` or `E`.
    pub tx_status: u8,
    pub terminated: bool,
    /// An extended-protocol error happened: the backend discards messages
    /// until the next Sync.
    skipping: bool,
}

impl Default for Relay {
    fn default() -> Self {
        Self {
            registry: Registry::default(),
            pending: Pending::new(),
            simple_marks: None,
            tx_status: b'I',
            terminated: false,
            skipping: false,
        }
    }
}

impl Relay {
    /// A relay for a backend whose last ReadyForQuery said `tx_status`.
    pub fn new(tx_status: u8) -> Self {
        Self {
            tx_status,
            ..Self::default()
        }
    }

    /// Nothing owed by the backend and no transaction open.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.tx_status == b'I'
    }

    /// Consume every complete client frame in `input`, appending what goes to
    /// the backend to `out`. Incomplete trailing bytes stay in `input`.
    pub fn on_client(
        &mut self,
        ctx: &Ctx<'_>,
        input: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<(), RelayError> {
        while let Some(len) = frame_len(input)? {
            self.client_frame(ctx, &input[..len], out)?;
            input.advance(len);
            if self.terminated {
                break;
            }
        }
        Ok(())
    }

    fn client_frame(
        &mut self,
        ctx: &Ctx<'_>,
        frame: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), RelayError> {
        let body = &frame[5..];
        match frame[0] {
            b'Q' => return self.client_query(ctx, frame, out),
            b'P' => return self.client_parse(ctx, frame, out),
            b'B' => {
                let head = messages::parse_bind_head(body)?;
                let statement = self.registry.statement(head.statement);
                self.registry.bind(
                    head.portal,
                    Portal {
                        statement,
                        row_marks: None,
                    },
                );
                self.pending.push_back(Expect::Bind { swallow: false });
            }
            b'D' => {
                let (kind, name) = messages::parse_target(body, "Describe")?;
                let target = if kind == b'S' {
                    DescribeTarget::Statement(self.registry.statement(name))
                } else {
                    DescribeTarget::Portal(name.to_vec())
                };
                self.pending.push_back(Expect::Describe(target));
            }
            b'E' => {
                let (portal, _limit) = messages::parse_execute(body)?;
                let marks = self.registry.portal(portal).and_then(Portal::marks);
                self.pending.push_back(Expect::Execute { marks });
            }
            b'C' => {
                let (kind, name) = messages::parse_target(body, "Close")?;
                if kind == b'S' {
                    self.registry.close_statement(name);
                } else {
                    self.registry.close_portal(name);
                }
                self.pending.push_back(Expect::Close { swallow: false });
            }
            b'S' => self.pending.push_back(Expect::Sync),
            b'c' | b'f' => self.forget_syncs_sent_during_copy_in(),
            b'F' => self.pending.push_back(Expect::Simple),
            b'X' => self.terminated = true,
            // Flush, CopyData/Done/Fail and anything unknown: relayed as is;
            // PostgreSQL itself rejects what it does not understand.
            _ => {}
        }
        out.extend_from_slice(frame);
        Ok(())
    }

    /// PostgreSQL ignores Sync while in copy-in mode. A client that runs
    /// COPY FROM STDIN through Bind/Execute (libpq, tokio-postgres) may send
    /// Sync before its CopyData; when its CopyDone/CopyFail arrives, every
    /// Sync queued since that Execute was swallowed by the backend and will
    /// get no ReadyForQuery.
    fn forget_syncs_sent_during_copy_in(&mut self) {
        let mut execute_at = None;
        for (i, e) in self.pending.iter().enumerate().rev() {
            match e {
                // A simple-query COPY: Syncs before it are real.
                Expect::Simple => return,
                Expect::Execute { .. } => {
                    execute_at = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let Some(at) = execute_at else { return };
        let mut i = at + 1;
        while i < self.pending.len() {
            if matches!(self.pending[i], Expect::Sync) {
                self.pending.remove(i);
            } else {
                i += 1;
            }
        }
    }

    fn client_query(
        &mut self,
        ctx: &Ctx<'_>,
        frame: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), RelayError> {
        let sql = messages::parse_query(&frame[5..])?;
        self.pending.push_back(Expect::Simple);
        let hits = ctx.classifier.hits(sql);
        if hits.is_empty() {
            ctx.metrics.stmt_passthrough.increment(1);
            out.extend_from_slice(frame);
            return Ok(());
        }
        match rewrite::plan(&hits) {
            Plan::Refuse(err) => {
                ctx.metrics.stmt_refused.increment(1);
                messages::query(out, raise_sql(&err).as_bytes());
            }
        }
        Ok(())
    }

    fn client_parse(
        &mut self,
        ctx: &Ctx<'_>,
        frame: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), RelayError> {
        let parse = messages::parse_parse(&frame[5..])?;
        let hits = ctx.classifier.hits(parse.sql);
        if hits.is_empty() {
            ctx.metrics.stmt_passthrough.increment(1);
            let stmt = Arc::new(Statement::default());
            self.registry.add_statement(parse.name, stmt.clone());
            self.pending.push_back(Expect::Parse {
                name: parse.name.to_vec(),
                statement: Some(stmt),
                swallow: false,
            });
            out.extend_from_slice(frame);
            return Ok(());
        }
        match rewrite::plan(&hits) {
            Plan::Refuse(err) => {
                ctx.metrics.stmt_refused.increment(1);
                self.refuse_extended(&err, out);
            }
        }
        Ok(())
    }

    /// Refuse an extended-protocol statement by making the backend raise our
    /// error in its place: the transaction then fails exactly as it would on
    /// a PostgreSQL error, the backend skips the client's messages up to
    /// Sync, and every response stays in order. The helper messages' own
    /// responses are swallowed; only the error reaches the client.
    fn refuse_extended(&mut self, err: &PgError, out: &mut BytesMut) {
        let sql = raise_sql(err);
        let close = {
            let mut b = BytesMut::new();
            let s = messages::begin_msg(&mut b, b'C');
            bytes::BufMut::put_u8(&mut b, b'S');
            messages::put_cstr(&mut b, REFUSAL_STATEMENT);
            messages::finish_msg(&mut b, s);
            b
        };
        out.extend_from_slice(&close);
        messages::parse(out, REFUSAL_STATEMENT, sql.as_bytes(), &[]);
        messages::bind_empty(out, b"", REFUSAL_STATEMENT);
        messages::execute(out, b"", 0);
        self.pending.push_back(Expect::Close { swallow: true });
        self.pending.push_back(Expect::Parse {
            name: Vec::new(),
            statement: None,
            swallow: true,
        });
        self.pending.push_back(Expect::Bind { swallow: true });
        self.pending.push_back(Expect::Execute { marks: None });
    }

    /// Consume every complete backend frame in `input` into `out`.
    pub fn on_backend(
        &mut self,
        ctx: &Ctx<'_>,
        input: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<(), RelayError> {
        while let Some(len) = frame_len(input)? {
            let forward = self.backend_frame(ctx, &input[..len], out)?;
            if forward {
                out.extend_from_slice(&input[..len]);
            }
            input.advance(len);
        }
        Ok(())
    }

    /// Update state for one backend frame; `Ok(true)` = relay it unchanged.
    fn backend_frame(
        &mut self,
        ctx: &Ctx<'_>,
        frame: &[u8],
        out: &mut BytesMut,
    ) -> Result<bool, RelayError> {
        let body = &frame[5..];
        match frame[0] {
            b'D' => return self.data_row(ctx, body, out),
            b'T' => self.row_description(ctx, body)?,
            b'n' => self.no_data()?,
            b'1' => return self.pop_swallowable(|e| matches!(e, Expect::Parse { .. })),
            b'2' => return self.pop_swallowable(|e| matches!(e, Expect::Bind { .. })),
            b'3' => return self.pop_swallowable(|e| matches!(e, Expect::Close { .. })),
            b'C' | b'I' | b's' => self.result_end()?,
            b'E' => self.on_error(),
            b'Z' => self.ready(body)?,
            _ => {}
        }
        Ok(true)
    }

    fn data_row(&self, ctx: &Ctx<'_>, body: &[u8], out: &mut BytesMut) -> Result<bool, RelayError> {
        let marks = match self.pending.front() {
            Some(Expect::Execute { marks }) => marks.as_ref(),
            _ => self.simple_marks.as_ref(),
        };
        let Some(marks) = marks else {
            return Ok(true);
        };
        // A marked result with no hook to decrypt it must not reach the client.
        let hook = ctx.row_hook.ok_or_else(|| {
            RelayError::Refused(PgError::internal(
                "a protected column reached a session without decryption",
            ))
        })?;
        hook.rewrite_row(marks, body, out)
            .map_err(RelayError::Refused)?;
        Ok(false)
    }

    fn row_description(&mut self, ctx: &Ctx<'_>, body: &[u8]) -> Result<(), RelayError> {
        let marks = mark_columns(ctx.protected, body)?;
        match self.pending.front() {
            Some(Expect::Describe(DescribeTarget::Statement(stmt))) => {
                if let Some(s) = stmt {
                    let _ = s.row_marks.set(marks);
                }
                self.pending.pop_front();
            }
            Some(Expect::Describe(DescribeTarget::Portal(name))) => {
                if let Some(p) = self.registry.portal_mut(name) {
                    p.row_marks = marks;
                }
                self.pending.pop_front();
            }
            Some(Expect::Simple) => self.simple_marks = marks,
            other => {
                return Err(RelayError::Desync(format!(
                    "RowDescription while expecting {other:?}"
                )));
            }
        }
        Ok(())
    }

    fn no_data(&mut self) -> Result<(), RelayError> {
        match self.pending.pop_front() {
            Some(Expect::Describe(DescribeTarget::Statement(Some(s)))) => {
                let _ = s.row_marks.set(None);
                Ok(())
            }
            Some(Expect::Describe(_)) => Ok(()),
            other => Err(RelayError::Desync(format!(
                "NoData while expecting {other:?}"
            ))),
        }
    }

    /// Pop the front entry, which must satisfy `is`; relay unless swallowed.
    fn pop_swallowable(&mut self, is: impl Fn(&Expect) -> bool) -> Result<bool, RelayError> {
        match self.pending.pop_front() {
            Some(e) if is(&e) => Ok(!matches!(
                e,
                Expect::Parse { swallow: true, .. }
                    | Expect::Bind { swallow: true }
                    | Expect::Close { swallow: true }
            )),
            other => Err(RelayError::Desync(format!(
                "completion while expecting {other:?}"
            ))),
        }
    }

    /// CommandComplete / EmptyQueryResponse / PortalSuspended.
    fn result_end(&mut self) -> Result<(), RelayError> {
        match self.pending.front() {
            Some(Expect::Execute { .. }) => {
                self.pending.pop_front();
                Ok(())
            }
            Some(Expect::Simple) => {
                self.simple_marks = None;
                Ok(())
            }
            other => Err(RelayError::Desync(format!(
                "end of result while expecting {other:?}"
            ))),
        }
    }

    /// After an error in the extended protocol the backend discards every
    /// message up to Sync — simple Queries included — so do we. A statement
    /// whose Parse failed or was skipped does not exist. An error inside a
    /// simple Query ends only that Query (its ReadyForQuery still comes).
    fn on_error(&mut self) {
        self.simple_marks = None;
        if matches!(self.pending.front(), Some(Expect::Simple)) {
            return;
        }
        self.skipping = true;
        while let Some(front) = self.pending.front() {
            if matches!(front, Expect::Sync) {
                break;
            }
            if let Some(Expect::Parse {
                name,
                statement: Some(s),
                ..
            }) = self.pending.pop_front()
            {
                self.registry.forget_statement(&name, &s);
            }
        }
    }

    fn ready(&mut self, body: &[u8]) -> Result<(), RelayError> {
        // While skipping after an error, only a Sync ends the skip; anything
        // queued before it (even a simple Query) was discarded unanswered.
        let skipping = std::mem::take(&mut self.skipping);
        loop {
            match self.pending.pop_front() {
                Some(Expect::Sync) => break,
                Some(Expect::Simple) if !skipping => break,
                Some(Expect::Parse {
                    name,
                    statement: Some(s),
                    ..
                }) if skipping => {
                    self.registry.forget_statement(&name, &s);
                }
                Some(_) => {}
                None => {
                    return Err(RelayError::Desync(
                        "ReadyForQuery with nothing pending".to_owned(),
                    ));
                }
            }
        }
        self.simple_marks = None;
        self.tx_status = body.first().copied().unwrap_or(b'I');
        if self.tx_status == b'I' {
            self.registry.end_transaction();
        }
        Ok(())
    }
}

/// Decode a RowDescription only when some column could be protected.
fn mark_columns(
    protected: &ProtectedColumns,
    body: &[u8],
) -> Result<Option<Arc<RowMarks>>, RelayError> {
    if protected.is_empty() {
        return Ok(None);
    }
    let fields = messages::parse_row_description(body)?;
    let marks: Vec<Option<ColumnMark>> = fields
        .iter()
        .map(|f| {
            protected
                .get(f.table_oid, f.attnum)
                .map(|column| ColumnMark {
                    table_oid: f.table_oid,
                    attnum: f.attnum,
                    column,
                })
        })
        .collect();
    Ok(marks
        .iter()
        .any(Option::is_some)
        .then(|| Arc::new(RowMarks { marks })))
}

/// SQL that makes the backend raise `err` (SQLSTATE, message and hint).
fn raise_sql(err: &PgError) -> String {
    let lit = |s: &str| s.replace('\'', "''").replace("$byokpg$", "");
    let hint = err
        .hint
        .as_deref()
        .map(|h| format!(", HINT = '{}'", lit(h)))
        .unwrap_or_default();
    format!(
        "DO $byokpg$ BEGIN RAISE EXCEPTION USING ERRCODE = '{}', MESSAGE = '{}'{hint}; END $byokpg$",
        err.code,
        lit(&err.message)
    )
}

#[cfg(test)]
mod tests;
