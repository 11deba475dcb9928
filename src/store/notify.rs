//! A PostgreSQL connection that waits for notifications (`LISTEN`) without polling. Diesel's
//! connection keeps its socket to itself, so this one is libpq's own (through pq-sys, the
//! bindings diesel uses): it blocks in `poll(2)` on the socket until a notification arrives or a
//! timeout passes. libpq reads the URL, TLS and authentication exactly as for diesel.
//! The cache listener (`cache::listener`) is its one user.

use std::ffi::{CStr, CString};
use std::time::Duration;

use pq_sys::{ConnStatusType, ExecStatusType};

/// One libpq connection, owned.
pub struct Listener {
    conn: *mut pq_sys::PGconn,
}

// SAFETY: libpq allows a connection to be used from any thread, one at a time. `Listener` owns
// its connection and is not `Sync`, so only the thread holding it can use it.
unsafe impl Send for Listener {}

impl Listener {
    /// Connects to `url` (a libpq connection URI or string).
    pub fn connect(url: &str) -> Result<Listener, String> {
        let url = CString::new(url).map_err(|_| "the database URL holds a NUL byte".to_string())?;
        // SAFETY: `url` is NUL-terminated and outlives the call. libpq returns a connection object
        // (null only without memory), which `Listener` then owns and frees once, in `drop`.
        let conn = unsafe { pq_sys::PQconnectdb(url.as_ptr()) };
        if conn.is_null() {
            return Err("libpq could not allocate a connection".into());
        }
        let listener = Listener { conn };
        // SAFETY: the connection is live; the processor is a plain function that needs no
        // argument and only reads the message it is given.
        unsafe { pq_sys::PQsetNoticeProcessor(conn, Some(log_notice), std::ptr::null_mut()) };
        // SAFETY: `conn` is a live connection object.
        if unsafe { pq_sys::PQstatus(conn) } != ConnStatusType::CONNECTION_OK {
            return Err(listener.error());
        }
        Ok(listener)
    }

    /// libpq's message about the last failure on this connection.
    fn error(&self) -> String {
        // SAFETY: the connection is live; the message belongs to it, is NUL-terminated and never
        // null, and is copied before anything else runs on the connection.
        let msg = unsafe { CStr::from_ptr(pq_sys::PQerrorMessage(self.conn)) };
        let msg = msg.to_string_lossy().trim().to_string();
        if msg.is_empty() {
            "the connection failed".into()
        } else {
            msg
        }
    }

    /// Runs `sql` (statements with or without rows; rows are discarded).
    pub fn execute(&mut self, sql: &str) -> Result<(), String> {
        let sql = CString::new(sql).map_err(|_| "the statement holds a NUL byte".to_string())?;
        // SAFETY: the connection is live and `sql` NUL-terminated. `PQresultStatus` accepts the
        // null result of a failed call (as a fatal error), and the result is freed once.
        let status = unsafe {
            let res = pq_sys::PQexec(self.conn, sql.as_ptr());
            let status = pq_sys::PQresultStatus(res);
            pq_sys::PQclear(res);
            status
        };
        match status {
            ExecStatusType::PGRES_COMMAND_OK | ExecStatusType::PGRES_TUPLES_OK => Ok(()),
            _ => Err(self.error()),
        }
    }

    /// Waits until the server sends something (or closes the connection), at most `timeout`.
    /// Call `take` first: what libpq has already read is not waited for.
    pub fn wait(&self, timeout: Duration) -> Result<(), String> {
        // SAFETY: the connection is live.
        let fd = unsafe { pq_sys::PQsocket(self.conn) };
        if fd < 0 {
            return Err("the connection is closed".into());
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `pfd` is one valid pollfd, for the duration of the call.
        if unsafe { libc::poll(&mut pfd, 1, ms) } < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e.to_string());
            }
        }
        Ok(())
    }

    /// Reads what the server has sent, without waiting, and returns the payloads of the
    /// notifications received so far. An error means the connection is broken.
    pub fn take(&mut self) -> Result<Vec<String>, String> {
        // SAFETY: the connection is live.
        if unsafe { pq_sys::PQconsumeInput(self.conn) } == 0 {
            return Err(self.error());
        }
        let mut out = Vec::new();
        loop {
            // SAFETY: the connection is live; a notification is ours to free, once, after its
            // payload (NUL-terminated, never null) has been copied.
            unsafe {
                let n = pq_sys::PQnotifies(self.conn);
                if n.is_null() {
                    break;
                }
                out.push(CStr::from_ptr((*n).extra).to_string_lossy().into_owned());
                pq_sys::PQfreemem(n.cast());
            }
        }
        Ok(out)
    }
}

/// libpq's notices (and a server's message as it ends the connection) go to the log, not stderr.
extern "C" fn log_notice(_: *mut std::os::raw::c_void, message: *const std::os::raw::c_char) {
    if message.is_null() {
        return;
    }
    // SAFETY: libpq passes a NUL-terminated message, valid for the duration of the call.
    let message = unsafe { CStr::from_ptr(message) }.to_string_lossy();
    tracing::info!(notice = %message.trim(), "PostgreSQL, on the cache listener's connection");
}

impl Drop for Listener {
    fn drop(&mut self) {
        // SAFETY: the connection object is owned and freed here only.
        unsafe { pq_sys::PQfinish(self.conn) }
    }
}
