//! Cancel keys. Clients get byokpg's own (pid, secret); a CancelRequest
//! carrying them is forwarded to the real backend of that session.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::backend::Target;
use crate::protocol::scram::fill_random;

#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub secret: i32,
    pub target: Target,
    pub backend_pid: i32,
    pub backend_secret: i32,
}

#[derive(Debug, Default)]
pub struct CancelMap {
    next_pid: AtomicI32,
    entries: Mutex<HashMap<i32, CancelTarget>>,
}

impl CancelMap {
    /// Register a session; returns the (pid, secret) to give its client.
    pub fn register(&self, target: Target, backend_pid: i32, backend_secret: i32) -> (i32, i32) {
        // Pids wrap within positive i32; a collision with a live session
        // would be overwritten, so skip taken ones.
        let mut raw = [0u8; 4];
        fill_random(&mut raw);
        let secret = i32::from_ne_bytes(raw);
        let mut map = self.lock();
        let pid = loop {
            let p = self.next_pid.fetch_add(1, Ordering::Relaxed) & 0x3fff_ffff;
            if p != 0 && !map.contains_key(&p) {
                break p;
            }
        };
        map.insert(
            pid,
            CancelTarget {
                secret,
                target,
                backend_pid,
                backend_secret,
            },
        );
        (pid, secret)
    }

    pub fn remove(&self, pid: i32) {
        self.lock().remove(&pid);
    }

    /// The target for a CancelRequest, if pid and secret match.
    pub fn lookup(&self, pid: i32, secret: i32) -> Option<CancelTarget> {
        self.lock()
            .get(&pid)
            .filter(|t| t.secret == secret)
            .cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, CancelTarget>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (single insert/remove), so a poisoned lock is still usable.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
