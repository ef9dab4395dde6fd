//! Progress of a job: an indicatif bar with rate and ETA on a terminal,
//! plain lines (at most one every 2 s) otherwise.
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where progress goes.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    tenant: String,
    started: Instant,
    start_done: u64,
    done: u64,
    total: u64,
    last_line: Option<Instant>,
}

impl Progress {
    /// A bar when stderr is a terminal, plain lines otherwise.
    pub fn auto() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{msg} [{bar:40}] {pos}/{len} rows, {per_sec}, ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style.progress_chars("=> "));
            bar
        });
        Self {
            bar,
            tenant: String::new(),
            started: Instant::now(),
            start_done: 0,
            done: 0,
            total: 0,
            last_line: None,
        }
    }

    pub fn start(&mut self, tenant: &str, done: u64, total: u64) {
        tenant.clone_into(&mut self.tenant);
        self.started = Instant::now();
        (self.start_done, self.done, self.total) = (done, done, total.max(done));
        if let Some(b) = &self.bar {
            b.set_message(format!("reencrypt {tenant}"));
            b.set_length(self.total);
            b.set_position(done);
            b.reset_eta();
        } else {
            eprintln!(
                "reencrypt {tenant}: {done}/{} rows to examine (resuming at {done})",
                self.total
            );
        }
    }

    /// `n` more rows examined.
    pub fn advance(&mut self, n: u64) {
        self.done += n;
        self.total = self.total.max(self.done);
        if let Some(b) = &self.bar {
            b.set_length(self.total);
            b.set_position(self.done);
            return;
        }
        let now = Instant::now();
        if self
            .last_line
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(2))
        {
            return;
        }
        self.last_line = Some(now);
        eprintln!("{}", self.plain_line(now));
    }

    fn plain_line(&self, now: Instant) -> String {
        let secs = now.duration_since(self.started).as_secs_f64().max(0.001);
        #[allow(clippy::cast_precision_loss)]
        let rate = (self.done - self.start_done) as f64 / secs;
        #[allow(clippy::cast_precision_loss)]
        let left = self.total.saturating_sub(self.done) as f64;
        let eta = if rate > 0.0 {
            format!("{:.0}s", left / rate)
        } else {
            "?".to_owned()
        };
        #[allow(clippy::cast_precision_loss)]
        let pct = if self.total == 0 {
            100.0
        } else {
            self.done as f64 * 100.0 / self.total as f64
        };
        format!(
            "reencrypt {}: {}/{} rows ({pct:.0}%), {rate:.0} rows/s, ETA {eta}",
            self.tenant, self.done, self.total
        )
    }

    /// A message line (above the bar on a terminal).
    pub fn line(&mut self, msg: &str) {
        match &self.bar {
            Some(b) => b.println(msg),
            None => eprintln!("{msg}"),
        }
    }

    pub fn finish(&mut self) {
        match &self.bar {
            Some(b) => b.finish(),
            None => eprintln!("{}", self.plain_line(Instant::now())),
        }
    }
}
