//! Attribute strings that repeat from request to request (routes, host names), kept once for the
//! life of the process so a span can take them as `&'static str`.
//!
//! Why: with a batch exporter, every `String` in a span attribute is allocated on the request's
//! thread and freed on the exporter's, which with glibc's allocator costs more than the copy;
//! the server layer's budget in `BENCHMARKS.md` (`layers`) needs these strings kept instead.
//!
//! Bounded: each table keeps at most its capacity of strings of at most [`MAX_LEN`] bytes, for
//! good; once a table is full, callers copy as before. The route table is filled from the
//! application's own routes; the host table from `Host` headers, which a client controls, so it
//! is small and separate: filling it costs a client the fast path and nothing else.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::{LazyLock, OnceLock, PoisonError, RwLock};
use std::thread::LocalKey;

use opentelemetry::Value;

/// Longest string kept.
pub(crate) const MAX_LEN: usize = 256;

/// Most recently used strings per thread and table: looked up without a lock.
const RECENT_PER_THREAD: usize = 16;

/// One table of kept strings.
pub(crate) struct Interner {
    capacity: usize,
    kept: LazyLock<RwLock<HashSet<&'static str>>>,
    /// The table once full: it never changes again, so it is read without the lock (a flood of
    /// new values, such as random `Host` headers, then costs no lock traffic between threads).
    frozen: OnceLock<HashSet<&'static str>>,
    recent: &'static LocalKey<RefCell<Vec<&'static str>>>,
}

thread_local! {
    static RECENT_ROUTES: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) };
    static RECENT_HOSTS: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) };
}

/// Routes (`http.route`, span names built from them): as many as an application has.
pub(crate) static ROUTES: Interner = Interner::new(1024, &RECENT_ROUTES);

/// `server.address` values from `Host` headers.
pub(crate) static HOSTS: Interner = Interner::new(64, &RECENT_HOSTS);

impl Interner {
    const fn new(capacity: usize, recent: &'static LocalKey<RefCell<Vec<&'static str>>>) -> Self {
        Self { capacity, kept: LazyLock::new(Default::default), frozen: OnceLock::new(), recent }
    }

    /// `text` as a kept string, or `None` when it is too long or the table is full.
    pub(crate) fn get(&self, text: &str) -> Option<&'static str> {
        if text.len() > MAX_LEN {
            return None;
        }
        if let Some(hit) =
            self.recent.with(|recent| recent.borrow().iter().copied().find(|kept| *kept == text))
        {
            return Some(hit);
        }
        let kept = self.kept_or_keep(text)?;
        self.recent.with(|recent| {
            let mut recent = recent.borrow_mut();
            if recent.len() == RECENT_PER_THREAD {
                recent.pop();
            }
            recent.insert(0, kept);
        });
        Some(kept)
    }

    /// `text` as an attribute value: the kept string, else a copy for this span.
    pub(crate) fn value(&self, text: &str) -> Value {
        match self.get(text) {
            Some(kept) => Value::from(kept),
            None => Value::from(text.to_owned()),
        }
    }

    /// `text` as a span name: the kept string, else a copy for this span.
    pub(crate) fn name(&self, text: &str) -> Cow<'static, str> {
        match self.get(text) {
            Some(kept) => Cow::Borrowed(kept),
            None => Cow::Owned(text.to_owned()),
        }
    }

    fn kept_or_keep(&self, text: &str) -> Option<&'static str> {
        if let Some(frozen) = self.frozen.get() {
            return frozen.get(text).copied();
        }
        if let Some(kept) = self.kept.read().unwrap_or_else(PoisonError::into_inner).get(text) {
            return Some(kept);
        }
        let mut kept = self.kept.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(already) = kept.get(text) {
            return Some(already);
        }
        if kept.len() >= self.capacity {
            return None;
        }
        // Leaked on purpose: kept for the life of the process, bounded by `capacity * MAX_LEN`.
        let new: &'static str = Box::leak(text.into());
        kept.insert(new);
        if kept.len() == self.capacity {
            let _ = self.frozen.set(kept.clone());
        }
        Some(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static RECENT_TEST: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) };
    }

    #[test]
    fn keeps_each_string_once_and_stops_when_full() {
        static TABLE: Interner = Interner::new(3, &RECENT_TEST);
        let first = TABLE.get("/v1/models").unwrap();
        assert_eq!(first, "/v1/models");
        assert!(std::ptr::eq(first, TABLE.get(&String::from("/v1/models")).unwrap()), "one copy kept");
        assert_eq!(TABLE.get("a"), Some("a"));
        assert_eq!(TABLE.get("b"), Some("b"));
        assert!(TABLE.frozen.get().is_some(), "full: read without the lock from now on");
        assert_eq!(TABLE.get("c"), None, "full: the caller copies");
        assert_eq!(TABLE.value("c").as_str(), "c");
        assert!(matches!(TABLE.name("c"), Cow::Owned(name) if name == "c"));
        assert!(matches!(TABLE.name("a"), Cow::Borrowed("a")));
        assert_eq!(TABLE.get("/v1/models"), Some("/v1/models"), "kept strings stay usable");
        assert_eq!(TABLE.get(&"x".repeat(MAX_LEN + 1)), None, "too long");
        // Another thread finds the same strings without its own copies.
        let elsewhere =
            std::thread::spawn(|| TABLE.get("a").map(|kept| kept as *const str as *const u8 as usize))
                .join()
                .unwrap();
        assert_eq!(elsewhere, Some(TABLE.get("a").unwrap().as_ptr() as usize));
    }
}
