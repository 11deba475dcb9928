//! The current-version cache: the newest live version of recently read resources, so that a read
//! by id is answered from memory, without a database round trip or a blocking-pool hop.
//!
//! Coherence within an instance: every transaction notes the resources it writes (`touched`), and
//! once it has ended their entries are dropped (`forget`). A read that missed fills the cache only
//! if no write ended while it read (a generation counter, checked after the insert), so a version
//! read before a write commits can never stay behind it.
//!
//! Across instances (PostgreSQL): each write transaction also sends the keys it wrote with
//! `NOTIFY cairn_current`, delivered at commit; a listener thread per instance forgets them as
//! they arrive (`listen`). While the listener is not connected the cache is bypassed and, once it
//! is again, emptied, so notifications missed meanwhile cannot leave stale entries.
//! AuditEvents are never cached: their rows are written from the audit log behind the cache's back.

use std::cell::RefCell;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::notify::Listener;

use super::VersionRow;

/// The PostgreSQL notification channel of written resources.
pub const CHANNEL: &str = "cairn_current";
/// How long the listener waits on its socket at a time (a notification ends the wait at once):
/// the longest it takes to notice that its cache is gone.
const WAIT: Duration = Duration::from_millis(250);
/// How often the listener checks that its connection still answers.
const PING: Duration = Duration::from_secs(1);

/// A resource's key, as the cache holds it.
type Key = (String, String);

/// A key looked up without allocating; hashes as `Key` does.
struct KeyRef<'a>(&'a str, &'a str);

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
        self.1.hash(state);
    }
}

impl quick_cache::Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

/// A cached current version, with the patients whose compartment holds it (for audit records).
#[derive(Debug)]
pub struct Cached {
    pub row: VersionRow,
    pub patients: Arc<[String]>,
}

/// An entry's weight: roughly the bytes it holds.
#[derive(Clone)]
struct Bytes;

impl quick_cache::Weighter<Key, Arc<Cached>> for Bytes {
    fn weight(&self, key: &Key, c: &Arc<Cached>) -> u64 {
        let patients: usize = c.patients.iter().map(|p| p.len() + 24).sum();
        (key.0.len() + key.1.len() + c.row.content.len() + c.row.method.len() + patients + 200)
            as u64
    }
}

/// Whether resources of this type may be cached.
pub fn cacheable(ty: &str) -> bool {
    ty != "AuditEvent"
}

pub struct ReadCache {
    entries: quick_cache::sync::Cache<Key, Arc<Cached>, Bytes>,
    /// Moves on before every invalidation: a read that saw it move while it read does not cache.
    generation: AtomicU64,
    /// False while this instance could have missed another's writes: the cache is bypassed.
    live: AtomicBool,
}

/// The generation a read started at (see `ReadCache::remember`).
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

impl ReadCache {
    /// A cache of at most `bytes`; `live` is false when it must wait for a listener first.
    pub fn new(bytes: u64, live: bool) -> ReadCache {
        ReadCache {
            entries: quick_cache::sync::Cache::with_weighter(
                (bytes / 2048).max(16) as usize,
                bytes,
                Bytes,
            ),
            generation: AtomicU64::new(0),
            live: AtomicBool::new(live),
        }
    }

    /// The cached current version of `ty/id`, if any.
    pub fn get(&self, ty: &str, id: &str) -> Option<Arc<Cached>> {
        if !self.live.load(SeqCst) {
            return None;
        }
        self.entries.get(&KeyRef(ty, id))
    }

    /// Taken before a read of the database that may fill the cache.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.generation.load(SeqCst))
    }

    /// Caches `row`, the current version read since `ticket` was taken, unless a write ended
    /// meanwhile. The check comes after the insert: a write ending before it is seen here, one
    /// ending after it removes the entry itself.
    pub fn remember(&self, ticket: Ticket, row: &VersionRow, patients: Arc<[String]>) {
        if !self.admits(row) {
            return;
        }
        let key = (row.res_type.clone(), row.res_id.clone());
        let cached = Cached {
            row: row.clone(),
            patients,
        };
        self.entries.insert(key, Arc::new(cached));
        if self.generation.load(SeqCst) != ticket.0 || !self.live.load(SeqCst) {
            self.entries.remove(&KeyRef(&row.res_type, &row.res_id));
        }
    }

    /// Whether `row` would be cached now: a live version of a cacheable type, the cache on.
    pub fn admits(&self, row: &VersionRow) -> bool {
        !row.is_deleted() && cacheable(&row.res_type) && self.live.load(SeqCst)
    }

    /// Drops the entries of resources that were (or may have been) written.
    pub fn forget<'a>(&self, keys: impl IntoIterator<Item = (&'a str, &'a str)>) {
        self.generation.fetch_add(1, SeqCst);
        for (ty, id) in keys {
            self.entries.remove(&KeyRef(ty, id));
        }
    }

    /// Drops every entry.
    pub fn forget_all(&self) {
        self.generation.fetch_add(1, SeqCst);
        self.entries.clear();
    }

    /// Turns the cache on (emptied first) or off.
    fn set_live(&self, live: bool) {
        if live {
            self.forget_all();
        }
        self.live.store(live, SeqCst);
        if !live {
            self.forget_all();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

thread_local! {
    /// The resources written by the transaction running on this thread (see `Store::write_now`).
    static TOUCHED: RefCell<Option<Vec<Key>>> = const { RefCell::new(None) };
}

/// Notes that the running transaction writes `ty/id`. Types never cached are not noted: nothing
/// is to be forgotten, here or (through NOTIFY) on other instances.
pub fn touched(ty: &str, id: &str) {
    if !cacheable(ty) {
        return;
    }
    TOUCHED.with(|t| {
        let mut t = t.borrow_mut();
        debug_assert!(t.is_some(), "{ty}/{id} written outside Store::write_now");
        if let Some(list) = t.as_mut() {
            list.push((ty.to_string(), id.to_string()));
        }
    });
}

/// Collects `touched` keys while alive; the keys of the transaction are taken with `take`. Restores
/// an outer collection when it ends, by a panic too.
pub struct Touched {
    outer: Option<Vec<Key>>,
    done: bool,
}

impl Touched {
    pub fn start() -> Touched {
        Touched {
            outer: TOUCHED.with(|t| t.borrow_mut().replace(Vec::new())),
            done: false,
        }
    }

    /// The keys written so far (for the notification inside the transaction).
    pub fn so_far() -> Vec<Key> {
        TOUCHED.with(|t| t.borrow().clone().unwrap_or_default())
    }

    /// Ends the collection: the keys written.
    pub fn take(mut self) -> Vec<Key> {
        self.done = true;
        let outer = self.outer.take();
        TOUCHED
            .with(|t| std::mem::replace(&mut *t.borrow_mut(), outer))
            .unwrap_or_default()
    }
}

impl Drop for Touched {
    fn drop(&mut self) {
        if !self.done {
            let outer = self.outer.take();
            TOUCHED.with(|t| *t.borrow_mut() = outer);
        }
    }
}

/// The payloads that tell other instances about `keys` (`Type/id` separated by spaces, under
/// PostgreSQL's 8000-byte payload limit). AuditEvents are left out: they are never cached.
pub fn payloads(keys: &[Key]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    for (ty, id) in keys.iter().filter(|(ty, _)| cacheable(ty)) {
        if cur.len() + ty.len() + id.len() + 2 > 7000 {
            out.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(ty);
        cur.push('/');
        cur.push_str(id);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Starts the PostgreSQL listener of `cache` (a thread that ends with the cache).
pub fn listen(cache: &Arc<ReadCache>, url: String) {
    let weak = Arc::downgrade(cache);
    let spawned = std::thread::Builder::new()
        .name("cairn-cache".into())
        .spawn(move || listener(weak, url));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the cache listener; the read cache stays off");
    }
}

/// The listener's `application_name`, unless the URL sets one: operators see the connection for
/// what it is in `pg_stat_activity`.
pub const LISTENER_NAME: &str = "cairn-cache-listener";

fn listener(cache: Weak<ReadCache>, url: String) {
    let url = super::with_param(&url, "application_name", LISTENER_NAME);
    let mut failures = 0u32;
    loop {
        let Some(work) = super::background_work() else {
            return;
        };
        let connected = Listener::connect(&url).and_then(|mut c| {
            c.execute(&format!("LISTEN {CHANNEL}"))?;
            Ok(c)
        });
        drop(work);
        let mut conn = match connected {
            Ok(c) => c,
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(error = %e, "the read cache's listener cannot connect; the cache is bypassed until it can");
                }
                if cache.upgrade().is_none() {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if failures > 0 {
            tracing::info!("the read cache's listener is connected again");
        }
        failures = 0;
        match cache.upgrade() {
            Some(c) => c.set_live(true),
            None => return,
        }
        let mut pinged = Instant::now();
        let broken = loop {
            let Some(c) = cache.upgrade() else { return };
            let Some(work) = super::background_work() else {
                return;
            };
            let mut result = Ok(());
            if pinged.elapsed() >= PING {
                pinged = Instant::now();
                result = conn.execute("SELECT 1");
            }
            // After the ping, which may have read notifications that the wait would not see.
            let result = result.and_then(|()| conn.take()).map(|payloads| {
                for p in payloads {
                    c.forget(p.split(' ').filter_map(|k| k.split_once('/')));
                }
            });
            drop(work);
            drop(c);
            // The wait holds neither the cache nor the permission to work.
            if let Err(e) = result.and_then(|()| conn.wait(WAIT)) {
                if let Some(c) = cache.upgrade() {
                    c.set_live(false);
                }
                break e;
            }
        };
        tracing::warn!(error = %broken, "the read cache's listener lost its connection; the cache is bypassed until it reconnects");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ty: &str, id: &str, version: i64) -> VersionRow {
        VersionRow {
            seq: version,
            res_type: ty.into(),
            res_id: id.into(),
            version,
            last_updated: 0,
            method: "PUT".into(),
            deleted: 0,
            content: "{}".into(),
        }
    }

    #[test]
    fn a_read_overtaken_by_a_write_is_not_cached() {
        let c = ReadCache::new(1 << 20, true);
        let t = c.ticket();
        c.forget([("Patient", "a")]);
        c.remember(t, &row("Patient", "a", 1), Arc::from([]));
        assert!(c.get("Patient", "a").is_none());
        let t = c.ticket();
        c.remember(t, &row("Patient", "a", 2), Arc::from(["a".to_string()]));
        let hit = c.get("Patient", "a").unwrap();
        assert_eq!(
            (hit.row.version, &hit.patients[..]),
            (2, &["a".to_string()][..])
        );
        c.forget([("Patient", "a")]);
        assert!(c.get("Patient", "a").is_none());
    }

    #[test]
    fn audit_events_deletions_and_a_cache_off_line_are_not_cached() {
        let c = ReadCache::new(1 << 20, true);
        c.remember(c.ticket(), &row("AuditEvent", "a", 1), Arc::from([]));
        let mut gone = row("Patient", "b", 2);
        gone.deleted = 1;
        c.remember(c.ticket(), &gone, Arc::from([]));
        assert!(c.is_empty());
        c.remember(c.ticket(), &row("Patient", "c", 1), Arc::from([]));
        c.set_live(false);
        assert!(c.get("Patient", "c").is_none());
        c.remember(c.ticket(), &row("Patient", "c", 1), Arc::from([]));
        c.set_live(true);
        assert!(c.get("Patient", "c").is_none());
    }

    #[test]
    fn writes_are_collected_per_transaction_and_sent_in_small_payloads() {
        let outer = Touched::start();
        touched("Patient", "a");
        let inner = Touched::start();
        touched("Goal", "g");
        assert_eq!(
            Touched::so_far(),
            vec![("Goal".to_string(), "g".to_string())]
        );
        assert_eq!(inner.take(), vec![("Goal".to_string(), "g".to_string())]);
        assert_eq!(outer.take(), vec![("Patient".to_string(), "a".to_string())]);
        let many: Vec<Key> = (0..1000)
            .map(|i| ("Observation".to_string(), format!("id-{i:04}")))
            .chain([("AuditEvent".to_string(), "x".to_string())])
            .collect();
        let p = payloads(&many);
        assert!(p.len() > 1 && p.iter().all(|s| s.len() <= 7000));
        assert_eq!(p.join(" ").split(' ').count(), 1000);
        assert!(!p.join(" ").contains("AuditEvent"));
    }
}
