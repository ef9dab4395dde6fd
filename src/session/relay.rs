//! The message relay between one client and its backend, as a pure state
//! machine over byte buffers (no sockets), so every protocol path is unit
//! testable. Fast path: frames are copied whole after a look at their tag;
//! only Q/P/B/D/E/C/S from clients and T/D/1/2/3/n/C/s/I/E/Z from the
//! backend are looked into, and DataRows of results without a protected
//! column are never decoded.

use std::sync::Arc;

use bytes::{Buf as _, BytesMut};

use super::copy::{CopyError, CopyRewriter};
use super::registry::{
    ColumnMark, DescribeTarget, ExecMarks, Expect, MarksCell, Pending, Portal, Registry, RowMarks,
    Statement,
};
use super::write::{self, PlanCache, Rewritten, WriteCtx};
use crate::metrics::SessionMetrics;
use crate::protocol::frame::frame_len;
use crate::protocol::{FrameError, PgError, ProtocolError, messages};
use crate::rewrite::{
    self, Classifier, CryptoFailure, Need, ParamPlan, Plan, ProtectedColumns, RowHook,
};

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
    /// A key must be fetched before the current message can be handled; the
    /// message was not consumed and is handled again afterwards.
    #[error("a key is needed: {0:?}")]
    Need(Need),
    /// A RowDescription names a relation the catalog has not seen; the
    /// frame was not consumed.
    #[error("the catalog is stale")]
    StaleCatalog,
}

/// What the session needs from the current configuration, per call.
pub struct Ctx<'a> {
    pub classifier: &'a Classifier,
    pub protected: &'a ProtectedColumns,
    /// Relation OIDs the catalog knows, when a policy exists: a
    /// RowDescription naming another OID makes the session refresh it.
    pub known_oids: Option<&'a std::collections::HashSet<u32>>,
    /// The policy as the planner sees it; `None` = refuse flagged statements.
    pub write: Option<&'a WriteCtx>,
    pub metrics: &'a SessionMetrics,
}

/// Name of the backend statement byokpg uses to raise a refusal in place of
/// a client's statement (see [`Relay::refuse_extended`]).
const REFUSAL_STATEMENT: &[u8] = b"byokpg_refused";

/// Independent protocol states, each a flag the backend's answers set or clear.
#[allow(clippy::struct_excessive_bools)]
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
    /// byokpg failed the current result (XX001, key unavailable): drop the
    /// backend's responses up to the next ReadyForQuery.
    suppress: bool,
    /// The backend is in copy-in mode for an extended-protocol Execute.
    copy_in: bool,
    plans: PlanCache,
    /// A COPY on a protected table in progress.
    copy: Option<CopyStream>,
}

/// COPY data of a protected table flowing through the rewriter.
#[derive(Debug)]
struct CopyStream {
    rewriter: Box<CopyRewriter>,
    from_client: bool,
    /// The COPY failed (refused by byokpg or by the server): the client's
    /// remaining data is dropped, never relayed.
    failed: bool,
}

impl CopyStream {
    fn start(copy: &crate::rewrite::CopyPlanned) -> Self {
        Self {
            rewriter: Box::new(CopyRewriter::new(&copy.plan, copy.columns.clone())),
            from_client: matches!(
                copy.plan.direction,
                crate::rewrite::plan::CopyDirection::FromStdin
            ),
            failed: false,
        }
    }
}

/// The relay's key hook as the COPY rewriter wants it.
struct Fields<'a, 'b>(&'a mut (dyn RowHook + 'b));

impl crate::session::copy::FieldCrypto for Fields<'_, '_> {
    fn encrypt_field(&mut self, column: usize, plaintext: &[u8]) -> Result<Vec<u8>, CryptoFailure> {
        self.0.encrypt_param(column, plaintext, false)
    }
    fn decrypt_field(&mut self, column: usize, stored: &[u8]) -> Result<Vec<u8>, CryptoFailure> {
        self.0.decrypt_field(column, stored)
    }
    fn tenant(&self) -> &str {
        self.0.tenant()
    }
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
            suppress: false,
            copy_in: false,
            plans: PlanCache::default(),
            copy: None,
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
        self.pending.iter().all(|e| matches!(e, Expect::CopyEnd)) && self.tx_status == b'I'
    }

    /// Consume every complete client frame in `input`, appending what goes to
    /// the backend to `out`. Incomplete trailing bytes stay in `input`.
    /// On `RelayError::Need` the frame that needs a key is still in `input`.
    pub fn on_client(
        &mut self,
        ctx: &Ctx<'_>,
        mut hook: Option<&mut (dyn RowHook + '_)>,
        input: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<(), RelayError> {
        while let Some(len) = frame_len(input)? {
            self.client_frame(ctx, hook.as_deref_mut(), &input[..len], out)?;
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
        mut hook: Option<&mut (dyn RowHook + '_)>,
        frame: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), RelayError> {
        let body = &frame[5..];
        if self.copy.is_some()
            && matches!(frame[0], b'd' | b'c' | b'f')
            && self.client_copy(hook.as_deref_mut(), frame, out)?
        {
            return Ok(());
        }
        match frame[0] {
            b'Q' => return self.client_query(ctx, hook, frame, out),
            b'P' => return self.client_parse(ctx, hook, frame, out),
            b'B' => {
                let head = messages::parse_bind_head(body)?;
                let statement = self.registry.statement(head.statement);
                if let Some(Plan::Params(pp)) = statement.as_ref().and_then(|s| s.plan.as_ref()) {
                    return self.client_bind_protected(
                        ctx,
                        hook,
                        &pp.clone(),
                        statement.clone(),
                        frame,
                        out,
                    );
                }
                // Result formats only matter when a column can be marked; the
                // fast path does not decode the rest of the Bind.
                let result_formats = if ctx.protected.is_empty() {
                    None
                } else {
                    Some(messages::parse_bind(body)?.result_formats)
                };
                self.registry.bind(
                    head.portal,
                    Portal {
                        statement,
                        described: None,
                        result_formats,
                    },
                );
                self.pending.push_back(Expect::Bind { swallow: false });
            }
            b'D' => {
                let (kind, name) = messages::parse_target(body, "Describe")?;
                let target = if kind == b'S' {
                    let stmt = self.registry.statement(name);
                    if let Some(s) = &stmt {
                        s.describe_requested
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    DescribeTarget::Statement(stmt)
                } else {
                    let cell = MarksCell::default();
                    if let Some(p) = self.registry.portal_mut(name) {
                        p.described = Some(cell.clone());
                    }
                    DescribeTarget::Portal(cell)
                };
                self.pending.push_back(Expect::Describe(target));
            }
            b'E' => {
                let (portal, _limit) = messages::parse_execute(body)?;
                self.describe_if_unknown(ctx, portal, out);
                let snapshot = self.registry.portal(portal).cloned();
                // A prepared COPY on a protected table: its stream starts now.
                if let Some(Plan::Copy(c)) = snapshot
                    .as_ref()
                    .and_then(|p| p.statement.as_ref())
                    .and_then(|s| s.plan.as_ref())
                {
                    self.copy = Some(CopyStream::start(c));
                }
                self.pending.push_back(Expect::Execute {
                    marks: ExecMarks::new(snapshot),
                });
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
            b'S' if self.copy_in => {} // ignored by the backend in copy-in mode
            b'S' => self.pending.push_back(Expect::Sync),
            b'c' | b'f' => self.client_copy_end(),
            b'F' => self.pending.push_back(Expect::Simple),
            b'X' => self.terminated = true,
            // Flush, CopyData/Done/Fail and anything unknown: relayed as is;
            // PostgreSQL itself rejects what it does not understand.
            _ => {}
        }
        out.extend_from_slice(frame);
        Ok(())
    }

    /// The backend entered copy-in mode for an extended-protocol Execute
    /// (libpq, tokio-postgres: Bind, Execute, Sync, CopyData..., CopyDone,
    /// Sync). PostgreSQL ignores Sync in copy-in mode, so the Syncs the
    /// client sent after that Execute get no ReadyForQuery, and neither will
    /// the ones it sends until CopyDone/CopyFail (or until the backend errors
    /// out of copy mode).
    fn enter_extended_copy_in(&mut self) {
        if !matches!(self.pending.front(), Some(Expect::Execute { .. })) {
            return; // simple-query COPY: no Sync involved
        }
        let mut i = 1;
        while i < self.pending.len() {
            match self.pending[i] {
                Expect::Sync => {
                    self.pending.remove(i);
                }
                Expect::CopyEnd => {
                    // The client already ended the copy: later Syncs count.
                    self.pending.remove(i);
                    return;
                }
                _ => i += 1,
            }
        }
        self.copy_in = true;
    }

    fn client_query(
        &mut self,
        ctx: &Ctx<'_>,
        hook: Option<&mut (dyn RowHook + '_)>,
        frame: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), RelayError> {
        let sql = messages::parse_query(&frame[5..])?;
        let outcome = self.plan_flagged(ctx, hook, sql, false)?;
        self.pending.push_back(Expect::Simple);
        match outcome {
            Rewritten::Unchanged => out.extend_from_slice(frame),
            Rewritten::Sql { sql, .. } => messages::query(out, sql.as_bytes()),
            Rewritten::Copy { sql, copy } => {
                messages::query(out, sql.as_bytes());
                self.copy = Some(CopyStream::start(&copy));
            }
            Rewritten::Refuse(err) => messages::query(out, raise_sql(&err).as_bytes()),
        }
        Ok(())
    }

    /// The client ended a copy (CopyDone/CopyFail): copy-in mode is over, or,
    /// if the backend has not said it entered it yet, mark where the client
    /// ended it (see `enter_extended_copy_in`).
    fn client_copy_end(&mut self) {
        if self.copy_in {
            self.copy_in = false;
        } else {
            self.pending.push_back(Expect::CopyEnd);
        }
    }

    /// CopyData / CopyDone / CopyFail from the client during a protected COPY.
    /// `Ok(true)`: handled here (nothing more to relay).
    fn client_copy(
        &mut self,
        hook: Option<&mut (dyn RowHook + '_)>,
        frame: &[u8],
        out: &mut BytesMut,
    ) -> Result<bool, RelayError> {
        let Some(copy) = self.copy.as_mut().filter(|c| c.from_client) else {
            return Ok(false);
        };
        let tag = frame[0];
        if copy.failed {
            // Our CopyFail went already; the client's end of copy ends it.
            if tag != b'd' {
                self.copy = None;
                self.client_copy_end();
            }
            return Ok(true);
        }
        let Some(hook) = hook else {
            return Err(RelayError::Refused(PgError::internal(
                "protected COPY without keys",
            )));
        };
        let mut fields = Fields(hook);
        let result = match tag {
            b'd' => copy.rewriter.feed(&frame[5..], &mut fields),
            b'c' => copy.rewriter.finish(&mut fields),
            _ => {
                // CopyFail: relayed by the caller, which also ends copy-in.
                self.copy = None;
                return Ok(false);
            }
        };
        match result {
            Ok(data) => {
                if !data.is_empty() {
                    copy_data(out, &data);
                }
                if tag == b'c' {
                    out.extend_from_slice(frame);
                    self.copy = None;
                    self.client_copy_end();
                }
                Ok(true)
            }
            Err(CopyError::Need(n)) => Err(RelayError::Need(n)),
            Err(CopyError::Refuse(e)) => {
                // The server aborts the COPY and answers with its error.
                let s = messages::begin_msg(out, b'f');
                messages::put_cstr(out, e.message.as_bytes());
                messages::finish_msg(out, s);
                copy.failed = true;
                if tag == b'c' {
                    self.copy = None;
                    self.client_copy_end();
                }
                Ok(true)
            }
        }
    }

    /// CopyData / CopyDone from the server during a protected COPY TO.
    /// `Ok(true)`: handled here (nothing more to relay).
    fn backend_copy(
        &mut self,
        hook: Option<&mut (dyn RowHook + '_)>,
        frame: &[u8],
        out: &mut BytesMut,
    ) -> Result<bool, RelayError> {
        let Some(copy) = self.copy.as_mut().filter(|c| !c.from_client && !c.failed) else {
            return Ok(false);
        };
        let Some(hook) = hook else {
            return Err(RelayError::Refused(PgError::internal(
                "protected COPY without keys",
            )));
        };
        let mut fields = Fields(hook);
        let result = if frame[0] == b'd' {
            copy.rewriter.feed(&frame[5..], &mut fields)
        } else {
            copy.rewriter.finish(&mut fields)
        };
        match result {
            Ok(data) => {
                if !data.is_empty() {
                    copy_data(out, &data);
                }
                if frame[0] == b'c' {
                    out.extend_from_slice(frame);
                    self.copy = None;
                }
                Ok(true)
            }
            Err(CopyError::Need(n)) => Err(RelayError::Need(n)),
            Err(CopyError::Refuse(e)) => {
                copy.failed = true;
                self.fail_result(&e, out);
                Ok(true)
            }
        }
    }

    /// Classify, then plan only what the classifier flagged. Counts the
    /// statement in the metrics once it is decided.
    fn plan_flagged(
        &mut self,
        ctx: &Ctx<'_>,
        hook: Option<&mut (dyn RowHook + '_)>,
        sql: &[u8],
        extended: bool,
    ) -> Result<Rewritten, RelayError> {
        let hits = ctx.classifier.hits(sql);
        let outcome = if hits.is_empty() {
            Rewritten::Unchanged
        } else if let Some(w) = ctx.write {
            write::rewrite(&mut self.plans, w, hook, sql, extended).map_err(RelayError::Need)?
        } else {
            let Plan::Refuse(err) = rewrite::plan(&hits) else {
                return Err(RelayError::Refused(PgError::internal("unexpected plan")));
            };
            Rewritten::Refuse(err)
        };
        let m = ctx.metrics;
        match &outcome {
            Rewritten::Unchanged => m.stmt_passthrough.increment(1),
            Rewritten::Sql { .. } | Rewritten::Copy { .. } => m.stmt_rewritten.increment(1),
            Rewritten::Refuse(_) => m.stmt_refused.increment(1),
        }
        Ok(outcome)
    }

    fn client_parse(
        &mut self,
        ctx: &Ctx<'_>,
        hook: Option<&mut (dyn RowHook + '_)>,
        frame: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), RelayError> {
        let parse = messages::parse_parse(&frame[5..])?;
        let (plan, sql) = match self.plan_flagged(ctx, hook, parse.sql, true)? {
            Rewritten::Refuse(err) => {
                self.refuse_extended(&err, out);
                return Ok(());
            }
            Rewritten::Unchanged => (None, None),
            Rewritten::Sql { sql, params } => (params.map(Plan::Params), Some(sql)),
            Rewritten::Copy { sql, copy } => (Some(Plan::Copy(copy)), Some(sql)),
        };
        let stmt = Arc::new(Statement {
            plan,
            ..Statement::default()
        });
        self.registry.add_statement(parse.name, stmt.clone());
        self.pending.push_back(Expect::Parse {
            name: parse.name.to_vec(),
            statement: Some(stmt),
            swallow: false,
        });
        match sql {
            None => out.extend_from_slice(frame),
            Some(sql) => messages::parse(out, parse.name, sql.as_bytes(), &parse.param_types),
        }
        Ok(())
    }

    /// Bind of a statement with protected parameters: encrypt them, check
    /// the tenant ones, and send the rewritten Bind.
    fn client_bind_protected(
        &mut self,
        ctx: &Ctx<'_>,
        hook: Option<&mut (dyn RowHook + '_)>,
        plan: &ParamPlan,
        statement: Option<Arc<Statement>>,
        frame: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), RelayError> {
        let bind = messages::parse_bind(&frame[5..])?;
        let Some(hook) = hook else {
            return Err(RelayError::Refused(PgError::internal(
                "protected statement without keys",
            )));
        };
        let params = match bind_params(plan, &bind, hook) {
            Ok(p) => p,
            Err(CryptoFailure::Need(n)) => return Err(RelayError::Need(n)),
            Err(CryptoFailure::Refuse(err)) => {
                ctx.metrics.stmt_refused.increment(1);
                self.refuse_extended(&err, out);
                return Ok(());
            }
        };
        let result_formats = (!ctx.protected.is_empty()).then(|| bind.result_formats.clone());
        self.registry.bind(
            bind.portal,
            Portal {
                statement,
                described: None,
                result_formats,
            },
        );
        self.pending.push_back(Expect::Bind { swallow: false });
        messages::bind(out, &bind, &params);
        Ok(())
    }

    /// With a policy, rows of a portal nobody described could carry protected
    /// columns that no RowDescription marks; byokpg describes such a portal
    /// itself (answer swallowed) so its rows are always marked (fail closed).
    fn describe_if_unknown(&mut self, ctx: &Ctx<'_>, portal: &[u8], out: &mut BytesMut) {
        if ctx.write.is_none() {
            return;
        }
        let Some(p) = self.registry.portal_mut(portal) else {
            return;
        };
        let statement_described = p.statement.as_ref().is_some_and(|s| s.describing());
        if p.described.is_some() || statement_described {
            return;
        }
        let cell = MarksCell::default();
        p.described = Some(cell.clone());
        let s = messages::begin_msg(out, b'D');
        bytes::BufMut::put_u8(out, b'P');
        messages::put_cstr(out, portal);
        messages::finish_msg(out, s);
        self.pending
            .push_back(Expect::Describe(DescribeTarget::Injected(cell)));
    }

    /// The next client message could not get its key: consume it and refuse
    /// it in place (its transaction fails as on a PostgreSQL error).
    pub fn refuse_next_client_message(
        &mut self,
        err: &PgError,
        input: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<(), RelayError> {
        let Some(len) = frame_len(input)? else {
            return Ok(());
        };
        if input[0] == b'Q' {
            self.pending.push_back(Expect::Simple);
            messages::query(out, raise_sql(err).as_bytes());
        } else {
            self.refuse_extended(err, out);
        }
        input.advance(len);
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
        self.pending.push_back(Expect::Execute {
            marks: ExecMarks::default(),
        });
    }

    /// Consume every complete backend frame in `input` into `out`. On
    /// `RelayError::Need` the frame that needs a key is still in `input`.
    pub fn on_backend(
        &mut self,
        ctx: &Ctx<'_>,
        mut hook: Option<&mut (dyn RowHook + '_)>,
        input: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<(), RelayError> {
        while let Some(len) = frame_len(input)? {
            let forward = self.backend_frame(ctx, hook.as_deref_mut(), &input[..len], out)?;
            if forward && !(self.suppress && input[0] != b'Z') {
                out.extend_from_slice(&input[..len]);
            }
            if input[0] == b'Z' {
                self.suppress = false;
            }
            input.advance(len);
        }
        Ok(())
    }

    /// Fail the result being relayed with `err`: the client gets the error
    /// now and nothing more of the backend's answers until ReadyForQuery.
    pub fn fail_result(&mut self, err: &PgError, out: &mut BytesMut) {
        if !self.suppress {
            err.encode(out);
        }
        self.suppress = true;
    }

    /// Update state for one backend frame; `Ok(true)` = relay it unchanged.
    fn backend_frame(
        &mut self,
        ctx: &Ctx<'_>,
        hook: Option<&mut (dyn RowHook + '_)>,
        frame: &[u8],
        out: &mut BytesMut,
    ) -> Result<bool, RelayError> {
        while matches!(self.pending.front(), Some(Expect::CopyEnd)) {
            self.pending.pop_front();
        }
        let body = &frame[5..];
        match frame[0] {
            b'D' if !self.suppress => return self.data_row(hook, body, out),
            b'd' | b'c' if self.copy.is_some() => {
                return self.backend_copy(hook, frame, out).map(|handled| !handled);
            }
            b'T' => return self.row_description(ctx, body),
            b'n' => return self.no_data(),
            b'1' => return self.pop_swallowable(|e| matches!(e, Expect::Parse { .. })),
            b'2' => return self.pop_swallowable(|e| matches!(e, Expect::Bind { .. })),
            b'3' => return self.pop_swallowable(|e| matches!(e, Expect::Close { .. })),
            b'G' => self.enter_extended_copy_in(),
            b'C' | b'I' | b's' => {
                self.copy_in = false;
                self.result_end()?;
            }
            b'E' => {
                self.copy_in = false;
                // A failed COPY FROM: drop the client's remaining data until
                // its CopyDone/CopyFail; a failed COPY TO is over.
                match self.copy.as_mut() {
                    Some(c) if c.from_client => c.failed = true,
                    _ => self.copy = None,
                }
                self.on_error();
            }
            b'Z' => {
                if self.copy.as_ref().is_some_and(|c| !c.from_client) {
                    self.copy = None;
                }
                self.ready(body)?;
            }
            _ => {}
        }
        Ok(true)
    }

    fn data_row(
        &mut self,
        hook: Option<&mut (dyn RowHook + '_)>,
        body: &[u8],
        out: &mut BytesMut,
    ) -> Result<bool, RelayError> {
        let marks = match self.pending.front_mut() {
            Some(Expect::Execute { marks }) => marks.get(),
            _ => self.simple_marks.clone(),
        };
        let Some(marks) = marks else {
            return Ok(true);
        };
        // A marked result with no keys to decrypt it must not reach the client.
        let Some(hook) = hook else {
            self.fail_result(
                &PgError::internal("a protected column reached a session without keys"),
                out,
            );
            return Ok(false);
        };
        match hook.rewrite_row(&marks, &marks.binary, body, out) {
            Ok(()) => Ok(false),
            Err(CryptoFailure::Need(n)) => Err(RelayError::Need(n)),
            Err(CryptoFailure::Refuse(e)) => {
                self.fail_result(&e, out);
                Ok(false)
            }
        }
    }

    /// `Ok(false)`: the answer to byokpg's own Describe, not relayed.
    fn row_description(&mut self, ctx: &Ctx<'_>, body: &[u8]) -> Result<bool, RelayError> {
        let marks = mark_columns(ctx, body)?;
        let forward = match self.pending.front() {
            Some(Expect::Describe(DescribeTarget::Statement(stmt))) => {
                if let Some(s) = stmt {
                    let _ = s.row_marks.set(marks);
                }
                true
            }
            Some(Expect::Describe(DescribeTarget::Portal(cell))) => {
                let _ = cell.set(marks);
                true
            }
            Some(Expect::Describe(DescribeTarget::Injected(cell))) => {
                let _ = cell.set(marks);
                false
            }
            Some(Expect::Simple) => {
                self.simple_marks = marks;
                return Ok(true);
            }
            other => {
                return Err(RelayError::Desync(format!(
                    "RowDescription while expecting {other:?}"
                )));
            }
        };
        self.pending.pop_front();
        Ok(forward)
    }

    fn no_data(&mut self) -> Result<bool, RelayError> {
        match self.pending.pop_front() {
            Some(Expect::Describe(DescribeTarget::Statement(Some(s)))) => {
                let _ = s.row_marks.set(None);
                Ok(true)
            }
            Some(Expect::Describe(DescribeTarget::Portal(cell))) => {
                let _ = cell.set(None);
                Ok(true)
            }
            Some(Expect::Describe(DescribeTarget::Injected(cell))) => {
                let _ = cell.set(None);
                Ok(false)
            }
            Some(Expect::Describe(DescribeTarget::Statement(None))) => Ok(true),
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
fn mark_columns(ctx: &Ctx<'_>, body: &[u8]) -> Result<Option<Arc<RowMarks>>, RelayError> {
    if ctx.protected.is_empty() && ctx.known_oids.is_none() {
        return Ok(None);
    }
    let fields = messages::parse_row_description(body)?;
    if let Some(known) = ctx.known_oids
        && fields
            .iter()
            .any(|f| f.table_oid != 0 && !known.contains(&f.table_oid))
    {
        return Err(RelayError::StaleCatalog);
    }
    let marks: Vec<Option<ColumnMark>> = fields
        .iter()
        .map(|f| {
            ctx.protected
                .get(f.table_oid, f.attnum)
                .map(|column| ColumnMark {
                    table_oid: f.table_oid,
                    attnum: f.attnum,
                    column,
                })
        })
        .collect();
    let binary = fields.iter().map(|f| f.format == 1).collect();
    Ok(marks
        .iter()
        .any(Option::is_some)
        .then(|| Arc::new(RowMarks { marks, binary })))
}

/// Parameters of a Bind with the protected ones encrypted.
fn bind_params(
    plan: &ParamPlan,
    bind: &messages::Bind<'_>,
    hook: &mut (dyn RowHook + '_),
) -> Result<Vec<Option<Vec<u8>>>, CryptoFailure> {
    let binary = |i: usize| match bind.param_formats.as_slice() {
        [] => false,
        [one] => *one == 1,
        many => many.get(i).is_some_and(|f| *f == 1),
    };
    for (i, table) in &plan.tenant {
        let value = bind.params.get(*i).copied().flatten();
        if value != Some(hook.tenant().as_bytes()) {
            return Err(CryptoFailure::Refuse(PgError::refused(
                "42501",
                format!(
                    "byokpg: a row of {table} names another tenant; this connection writes only its own tenant's rows"
                ),
            )));
        }
    }
    check_versions(plan, hook)?;
    let mut out: Vec<Option<Vec<u8>>> = bind.params.iter().map(|p| p.map(<[u8]>::to_vec)).collect();
    for (i, column) in &plan.encrypt {
        if let Some(Some(v)) = bind.params.get(*i) {
            out[*i] = Some(hook.encrypt_param(*column, v, binary(*i))?);
        }
    }
    for (i, column) in &plan.compare {
        if let Some(Some(v)) = bind.params.get(*i) {
            out[*i] = Some(hook.encrypt_compare_param(*column, v, binary(*i))?);
        }
    }
    Ok(out)
}

/// A statement whose compared values were fixed under some DEK versions
/// must not run once the tenant has another live one (it would miss rows).
fn check_versions(plan: &ParamPlan, hook: &mut (dyn RowHook + '_)) -> Result<(), CryptoFailure> {
    if !plan.rigid && plan.literal_versions.is_none() {
        return Ok(());
    }
    let live = hook.live_versions()?;
    if plan.rigid && live.len() > 1 {
        return Err(CryptoFailure::Refuse(super::write::rigid_refusal(
            hook.tenant(),
        )));
    }
    if let Some(baked) = &plan.literal_versions
        && live.iter().any(|v| !baked.contains(v))
    {
        return Err(CryptoFailure::Refuse(PgError::refused(
            "0A000",
            format!(
                "byokpg: the data key of tenant {} was rotated after this statement was prepared, and the values it compares were encrypted at prepare time; prepare it again (or bind the compared values as $n parameters)",
                hook.tenant()
            ),
        )));
    }
    Ok(())
}

fn copy_data(out: &mut BytesMut, data: &[u8]) {
    let s = messages::begin_msg(out, b'd');
    out.extend_from_slice(data);
    messages::finish_msg(out, s);
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
