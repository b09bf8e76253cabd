//! One client's session: its namespace, rights and challenge, and the execution of a
//! [`Command`] into a [`Reply`]. Pure with respect to sockets: the server feeds commands and
//! writes what comes out.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rand::RngCore;
use sha1::{Digest, Sha1};
use tokio::sync::broadcast;

use crate::command::{AuthArg, Command, NsProp, SelectAuth};
use crate::engine::{DEFAULT_NS, Engine, valid_ns_name};
use crate::namespace::{DiskRead, Namespace, NsState, OpError, ValueRead};
use crate::resp::Reply;
use crate::throttle::{AuthThrottle, BANNED_MSG, CLOSED_MSG, Stats, Verdict};

/// Most bytes one MGET may return.
const MGET_REPLY_MAX: usize = 32 << 20;

/// Server-wide settings and counters shared by sessions.
pub struct Shared {
    /// The storage engine.
    pub engine: Arc<Engine>,
    /// `--admin`.
    pub admin_password: Option<String>,
    /// `--protect`.
    pub protect: bool,
    /// Enables `STOP`.
    pub debug: bool,
    /// Random id of this server run (INFO).
    pub instance_id: u32,
    /// Start time (INFO).
    pub started: Instant,
    /// Commands executed.
    pub commands: AtomicU64,
    /// Connected clients.
    pub clients: AtomicU64,
    /// Bytes received.
    pub net_in: AtomicU64,
    /// Bytes sent.
    pub net_out: AtomicU64,
    /// Moving average of the time one value read from disk took, in nanoseconds.
    pub read_ewma_ns: AtomicU64,
    /// Connection limits in force (`max_clients` as lowered to the open-file limit).
    pub limits: crate::Limits,
    /// Counters of the limits.
    pub stats: Stats,
    /// Failure counts per source address and bans.
    pub throttle: AuthThrottle,
    /// Id given to the next connection (`HELLO`).
    pub next_client_id: AtomicU64,
    /// `--synctime` in force (0: off, or `--sync`).
    pub synctime: u64,
    /// `--secure`: plain-text passwords are refused.
    pub secure: bool,
    /// This server is a mirror: only its master's feed writes.
    pub replica: bool,
}

/// Above this average read time, reads are moved off the event loop (page-cache misses).
const SLOW_READ_NS: u64 = 50_000;

impl Shared {
    /// Whether value reads currently hit the disk rather than the page cache.
    pub fn reads_are_slow(&self) -> bool {
        self.read_ewma_ns.load(Ordering::Relaxed) > SLOW_READ_NS
    }

    /// Records how long one value read took.
    pub fn note_read(&self, took: Duration) {
        let sample = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let old = self.read_ewma_ns.load(Ordering::Relaxed);
        // Races between connections only blur the average; it is a heuristic.
        self.read_ewma_ns
            .store(old - old / 8 + sample / 8, Ordering::Relaxed);
    }
}

/// What the connection should do after a command.
pub enum Outcome {
    /// Send this reply.
    Reply(Reply),
    /// Flush pending replies, then wait for `command` on the namespace (`WAIT`).
    Wait {
        /// The namespace waited on (to unsubscribe when done).
        ns: Arc<Namespace>,
        /// Receiver subscribed when WAIT ran.
        rx: broadcast::Receiver<&'static str>,
        /// Upper-case name or `*`.
        command: String,
        /// Give up after this.
        timeout: Duration,
    },
    /// Read a value from disk without any lock held, then send it (`GET`).
    Read(DiskRead),
    /// Send the reply, then stop the whole server (`STOP`, debug only).
    Stop(Reply),
    /// Send the reply, then close this connection.
    Close(Reply),
    /// Send the reply after this delay (a throttled password failure).
    Delayed(Reply, Duration),
    /// `MIRROR`: from now on this connection is a replication feed, starting after the
    /// given number of entries of each namespace the replica already holds.
    Mirror(Vec<(String, u64, String)>),
}

/// Per-connection state.
pub struct Session {
    shared: Arc<Shared>,
    ns: Arc<Namespace>,
    writable: bool,
    admin: bool,
    challenge: Option<String>,
    touched: Vec<Arc<Namespace>>,
    /// Source address (TCP), for throttling password failures; `None` on the unix socket.
    peer: Option<IpAddr>,
    /// Connection id (`HELLO`).
    id: u64,
    /// Wrong passwords on this connection.
    auth_failures: u32,
    /// Set by the command being run when it rejected a password.
    denied: bool,
    /// Password-protected namespaces this connection selected with their password: it may
    /// see them in `NSLIST`/`NSINFO`.
    unlocked: Vec<String>,
    /// `MASTER` was sent: this connection replays a master's writes (seq ids kept).
    master: bool,
}

fn err(msg: &'static str) -> Reply {
    Reply::Error(Cow::Borrowed(msg))
}

fn sha1_hex(s: &str) -> String {
    hex::encode(Sha1::digest(s.as_bytes()))
}

/// The wire reply of a failed operation (storage failures are logged, not exposed).
pub fn op_reply(e: OpError) -> Reply {
    match e {
        OpError::Client(m) => err(m),
        OpError::Store(e) => {
            tracing::error!(error = %e, "storage failure");
            err("Internal Error")
        }
    }
}

fn text_reply(s: String) -> Reply {
    Reply::Bulk(Bytes::from(s.into_bytes()))
}

fn frozen(st: &NsState) -> Result<(), Reply> {
    if st.desc.freeze {
        Err(err("Namespace is temporarily frozen"))
    } else {
        Ok(())
    }
}

impl Session {
    /// A new session in the `default` namespace.
    pub fn new(shared: Arc<Shared>) -> Session {
        Session::with_peer(shared, None)
    }

    /// A new session of a client at `peer` (TCP) in the `default` namespace.
    pub fn with_peer(shared: Arc<Shared>, peer: Option<IpAddr>) -> Session {
        let ns = shared.engine.default_ns();
        let writable = !shared.protect;
        let id = shared.next_client_id.fetch_add(1, Ordering::Relaxed) + 1;
        // Upstream's rule: without an admin password every client is admin (the server warns
        // at start; docs/zdb.md says why that is unsafe).
        let admin = shared.admin_password.is_none();
        Session {
            shared,
            ns,
            writable,
            admin,
            challenge: None,
            touched: Vec::new(),
            peer,
            id,
            auth_failures: 0,
            denied: false,
            unlocked: Vec::new(),
            master: false,
        }
    }

    /// Whether this command carries a password (throttled).
    fn is_password_attempt(cmd: &Command) -> bool {
        match cmd {
            Command::Auth(a) => !matches!(a, AuthArg::Challenge),
            Command::Select { auth, .. } => !matches!(auth, SelectAuth::None),
            Command::Hello { password, .. } => password.is_some(),
            _ => false,
        }
    }

    /// Throttles a rejected password: delay, close, ban (see [`crate::throttle`]).
    fn password_failed(&mut self, reply: Reply) -> Outcome {
        self.auth_failures = self.auth_failures.saturating_add(1);
        let verdict =
            self.shared
                .throttle
                .failure(self.peer, self.auth_failures, &self.shared.stats);
        tracing::debug!(peer = ?self.peer, failures = self.auth_failures, ?verdict, "password rejected");
        match verdict {
            Verdict::Answer => Outcome::Reply(reply),
            Verdict::Delay(d) => Outcome::Delayed(reply, d),
            Verdict::Close => Outcome::Close(Reply::err(CLOSED_MSG)),
        }
    }

    /// Namespaces written since the last call (they need a flush before replies go out).
    pub fn take_touched(&mut self) -> Vec<Arc<Namespace>> {
        std::mem::take(&mut self.touched)
    }

    fn touch(&mut self) {
        if !self.touched.iter().any(|n| Arc::ptr_eq(n, &self.ns)) {
            self.touched.push(self.ns.clone());
        }
    }

    /// Executes one command.
    pub fn execute(&mut self, cmd: Command) -> Outcome {
        if self.ns.is_deleted() {
            return Outcome::Close(err(
                "Your active namespace is not available anymore (probably removed).",
            ));
        }
        self.shared.commands.fetch_add(1, Ordering::Relaxed);
        let name = cmd.name();
        if Self::is_password_attempt(&cmd) {
            // A banned source guesses no more, even on a connection opened before the ban.
            if self.shared.throttle.is_banned(self.peer) {
                return Outcome::Close(Reply::err(BANNED_MSG));
            }
            self.denied = false;
            let out = self.run(cmd).unwrap_or_else(|e| e);
            if std::mem::take(&mut self.denied) {
                return self.password_failed(out);
            }
            if !matches!(out, Reply::Error(_)) {
                self.ns.notify(name);
            }
            return Outcome::Reply(out);
        }
        let out = match cmd {
            Command::Wait {
                command,
                timeout_ms,
            } => {
                return Outcome::Wait {
                    ns: self.ns.clone(),
                    rx: self.ns.subscribe(),
                    command,
                    timeout: Duration::from_millis(timeout_ms),
                };
            }
            Command::Stop if self.shared.debug => return Outcome::Stop(Reply::ok()),
            Command::Mirror(have) => {
                if let Err(e) = self.require_admin() {
                    return Outcome::Reply(e);
                }
                return Outcome::Mirror(have);
            }
            Command::Stop => err("Unauthorized"),
            Command::Get(key) => {
                let plan = {
                    let mut st = self.ns.lock();
                    match frozen(&st) {
                        Ok(()) => st.get_plan(&key).map_err(op_reply),
                        Err(e) => Err(e),
                    }
                };
                match plan {
                    Ok(ValueRead::Done(v)) => v.map_or(Reply::Nil, Reply::Bulk),
                    Ok(ValueRead::Disk(read)) => {
                        self.ns.notify(name);
                        return Outcome::Read(read.cache_in(self.ns.clone()));
                    }
                    Err(e) => e,
                }
            }
            cmd => self.run(cmd).unwrap_or_else(|e| e),
        };
        if !matches!(out, Reply::Error(_)) {
            self.ns.notify(name);
        }
        Outcome::Reply(out)
    }

    fn require_admin(&self) -> Result<(), Reply> {
        if self.admin {
            Ok(())
        } else {
            Err(err("Permission denied"))
        }
    }

    /// Checks write rights on the current namespace (under its lock).
    fn writable(&self, st: &NsState) -> Result<(), Reply> {
        frozen(st)?;
        if st.desc.lock {
            return Err(err("Namespace is temporarily locked"));
        }
        if !self.writable {
            return Err(err("Namespace is in read-only mode"));
        }
        self.not_mirror()
    }

    /// A mirror takes writes only from its master's feed (or a `MASTER` connection).
    fn not_mirror(&self) -> Result<(), Reply> {
        if self.shared.replica && !self.master {
            return Err(err("Read-only mirror: writes go to its master"));
        }
        Ok(())
    }

    /// `--secure`: a password in clear text is refused (the challenge is not).
    fn plain_allowed(&self) -> Result<(), Reply> {
        if self.shared.secure {
            return Err(err(
                "Plain-text password refused (--secure): use the SECURE challenge",
            ));
        }
        Ok(())
    }

    fn run(&mut self, cmd: Command) -> Result<Reply, Reply> {
        let ns = self.ns.clone();
        Ok(match cmd {
            Command::Ping => Reply::Simple(Cow::Borrowed("PONG")),
            Command::Echo(b) => Reply::Bulk(b),
            Command::Hello { proto, password } => self.hello(proto, password)?,
            Command::Time => {
                let d = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                Reply::Array(vec![
                    text_reply(d.as_secs().to_string()),
                    text_reply(d.subsec_micros().to_string()),
                ])
            }
            Command::Auth(a) => self.auth(a)?,
            Command::Info => text_reply(crate::info::server_info(&self.shared)),
            Command::Set {
                key,
                value,
                timestamp,
            } => {
                if timestamp.is_some() {
                    self.require_admin()?;
                }
                let mut st = ns.lock();
                self.writable(&st)?;
                let r = st
                    .set_at(&key, &value, timestamp, self.master)
                    .map_err(op_reply)?;
                drop(st);
                self.touch();
                r.map_or(Reply::Nil, Reply::Bulk)
            }
            Command::MGet(keys) => {
                let mut st = ns.lock();
                frozen(&st)?;
                let mut out = Vec::with_capacity(keys.len());
                let mut total = 0usize;
                for k in keys {
                    let v = st.get(&k).map_err(op_reply)?;
                    total += v.as_ref().map_or(0, Bytes::len);
                    if total > MGET_REPLY_MAX {
                        return Err(err("Reply too large (MGET is limited to 32 MiB)"));
                    }
                    out.push(v.map_or(Reply::Nil, Reply::Bulk));
                }
                Reply::Array(out)
            }
            Command::Del { key, timestamp } => {
                if timestamp.is_some() {
                    self.require_admin()?;
                }
                let mut st = ns.lock();
                self.writable(&st)?;
                st.del(&key, timestamp).map_err(op_reply)?;
                drop(st);
                self.touch();
                Reply::ok()
            }
            Command::Exists(key) => {
                let st = ns.lock();
                frozen(&st)?;
                Reply::Int(i64::from(st.meta(&key).is_some()))
            }
            Command::Check(key) => {
                let mut st = ns.lock();
                frozen(&st)?;
                st.check(&key)
                    .map_err(op_reply)?
                    .map_or(Reply::Nil, |ok| Reply::Int(i64::from(ok)))
            }
            Command::Length(key) => {
                let st = ns.lock();
                frozen(&st)?;
                st.meta(&key)
                    .map_or(Reply::Nil, |m| Reply::Int(i64::from(m.0)))
            }
            Command::KeyTime(key) => {
                let st = ns.lock();
                frozen(&st)?;
                st.meta(&key)
                    .map_or(Reply::Nil, |m| Reply::Int(i64::from(m.1)))
            }
            Command::KeyCur(key) => {
                let st = ns.lock();
                frozen(&st)?;
                let (_, _, loc) = st.meta(&key).ok_or(err("Key not found"))?;
                Reply::bulk(&loc.to_bytes())
            }
            Command::Scan(c) => self.scan(&ns, c, true)?,
            Command::RScan(c) => self.scan(&ns, c, false)?,
            Command::KScan(prefix) => {
                let st = ns.lock();
                frozen(&st)?;
                let keys = st.kscan(&prefix).map_err(op_reply)?;
                if keys.is_empty() {
                    return Err(err("No keys match"));
                }
                Reply::Array(vec![
                    Reply::bulk(b"0"),
                    Reply::Array(keys.into_iter().map(Reply::Bulk).collect()),
                ])
            }
            Command::History { key, cursor } => {
                let mut st = ns.lock();
                frozen(&st)?;
                let (parent, ts, value) = st.history(&key, cursor.as_deref()).map_err(op_reply)?;
                Reply::Array(vec![
                    if parent.is_some() {
                        Reply::bulk(&parent.to_bytes())
                    } else {
                        Reply::Nil
                    },
                    text_reply(ts.to_string()),
                    Reply::Bulk(value),
                ])
            }
            Command::DbSize => Reply::Int(ns.lock().entries() as i64),
            Command::NsNew(name) => {
                self.require_admin()?;
                self.not_mirror()?;
                if !valid_ns_name(&name) {
                    return Err(err("This name is not allowed"));
                }
                match self.shared.engine.create(&name) {
                    Ok(true) => Reply::ok(),
                    Ok(false) => err("This namespace is not available"),
                    Err(e) => {
                        tracing::error!(ns = %name, error = %e, "NSNEW failed");
                        err("Could not create namespace")
                    }
                }
            }
            Command::NsDel(name) => {
                self.require_admin()?;
                self.not_mirror()?;
                if name == DEFAULT_NS {
                    return Err(err("Cannot remove default namespace"));
                }
                if name == self.ns.name {
                    return Err(err("Cannot remove namespace you're currently using."));
                }
                match self.shared.engine.delete(&name) {
                    Ok(true) => Reply::ok(),
                    Ok(false) => err("This namespace doesn't exists"),
                    Err(e) => {
                        tracing::error!(ns = %name, error = %e, "NSDEL failed");
                        err("Could not delete this namespace")
                    }
                }
            }
            Command::NsList => Reply::Array(
                self.shared
                    .engine
                    .list()
                    .into_iter()
                    .filter(|n| {
                        self.shared
                            .engine
                            .get(n)
                            .is_some_and(|ns| self.may_see(&ns))
                    })
                    .map(text_reply)
                    .collect(),
            ),
            Command::NsInfo(name) => {
                let target = self
                    .shared
                    .engine
                    .get(&name)
                    .ok_or(err("Namespace not found"))?;
                if !self.may_see(&target) {
                    return Err(err("Permission denied"));
                }
                text_reply(crate::info::namespace_info(&target, self.admin))
            }
            Command::NsSet { ns: name, prop } => self.nsset(&name, prop)?,
            Command::NsJump => {
                self.require_admin()?;
                ns.lock().store.jump().map_err(|e| op_reply(e.into()))?;
                Reply::ok()
            }
            Command::Select { ns: name, auth } => self.select(&name, auth)?,
            Command::Flush => {
                let mut st = ns.lock();
                if st.desc.public || st.desc.password.is_none() {
                    return Err(err("Flushing public namespace denied"));
                }
                self.writable(&st)?;
                st.wipe().map_err(op_reply)?;
                Reply::ok()
            }
            Command::IndexDirty { reset } => {
                self.require_admin()?;
                let mut st = ns.lock();
                let ids: Vec<Reply> = st
                    .store
                    .dirty_index
                    .iter()
                    .map(|&i| Reply::Int(i64::from(i)))
                    .collect();
                if reset {
                    st.store.dirty_index.clear();
                }
                Reply::Array(ids)
            }
            Command::DataRaw { fileid, offset } => {
                self.require_admin()?;
                let mut st = ns.lock();
                let (h, key, payload) = st
                    .store
                    .read_raw(fileid, offset)
                    .map_err(|_| err("Invalid offset or fileid"))?;
                Reply::Array(vec![
                    Reply::Bulk(key.into()),
                    Reply::Int(i64::from(h.flags)),
                    Reply::Int(i64::from(h.timestamp)),
                    Reply::Int(i64::from(h.value_crc)),
                    Reply::Bulk(payload.into()),
                ])
            }
            Command::Reload(name) => {
                self.require_admin()?;
                match self.shared.engine.reload(&name) {
                    Ok(true) => Reply::ok(),
                    Ok(false) => err("Namespace not found"),
                    Err(e) => {
                        tracing::error!(ns = %name, error = %e, "RELOAD failed");
                        err("Could not reload namespace")
                    }
                }
            }
            Command::Hooks => {
                self.require_admin()?;
                let runs = self
                    .shared
                    .engine
                    .hooks()
                    .map(|h| h.runs())
                    .unwrap_or_default();
                Reply::Array(
                    runs.into_iter()
                        .map(|r| {
                            Reply::Array(vec![
                                text_reply(r.event),
                                Reply::Array(r.args.into_iter().map(text_reply).collect()),
                                Reply::Int(i64::from(r.pid)),
                                Reply::Int(i64::try_from(r.created).unwrap_or(i64::MAX)),
                                Reply::Int(i64::try_from(r.finished).unwrap_or(i64::MAX)),
                                r.status.map_or(Reply::Nil, |c| Reply::Int(i64::from(c))),
                            ])
                        })
                        .collect(),
                )
            }
            Command::Master => {
                self.require_admin()?;
                self.master = true;
                Reply::ok()
            }
            Command::Wait { .. } | Command::Stop | Command::Get(_) | Command::Mirror(_) => {
                err("Command not supported")
            }
        })
    }

    fn scan(&self, ns: &Namespace, cursor: Option<Bytes>, forward: bool) -> Result<Reply, Reply> {
        let mut st = ns.lock();
        frozen(&st)?;
        let (next, items) = st
            .scan(cursor.as_deref(), forward)
            .map_err(op_reply)?
            .ok_or(err("No more data"))?;
        let list = items
            .into_iter()
            .map(|(k, len, ts)| {
                Reply::Array(vec![
                    Reply::Bulk(k),
                    Reply::Int(i64::from(len)),
                    Reply::Int(i64::from(ts)),
                ])
            })
            .collect();
        Ok(Reply::Array(vec![
            Reply::bulk(&next.to_bytes()),
            Reply::Array(list),
        ]))
    }

    fn check_secure(&mut self, hash: &[u8], password: &str) -> Result<(), Reply> {
        let challenge = self.challenge.take().ok_or(err("No challenge requested"))?;
        let want = sha1_hex(&format!("{challenge}:{password}"));
        if hash.eq_ignore_ascii_case(want.as_bytes()) {
            Ok(())
        } else {
            self.denied = true;
            Err(err("Access denied"))
        }
    }

    fn auth(&mut self, a: AuthArg) -> Result<Reply, Reply> {
        if let AuthArg::Challenge = a {
            let mut nonce = [0u8; 8];
            rand::thread_rng().fill_bytes(&mut nonce);
            let c = hex::encode(nonce);
            self.challenge = Some(c.clone());
            return Ok(Reply::Simple(c.into()));
        }
        let admin = self
            .shared
            .admin_password
            .clone()
            .ok_or(err("Authentication disabled"))?;
        if matches!(a, AuthArg::Plain(_)) {
            self.plain_allowed()?;
        }
        match a {
            AuthArg::Plain(pw) if pw[..] == *admin.as_bytes() => {}
            AuthArg::Plain(_) => {
                self.denied = true;
                return Err(err("Access denied"));
            }
            AuthArg::Secure(h) => self.check_secure(&h, &admin)?,
            AuthArg::Challenge => {}
        }
        self.admin = true;
        Ok(Reply::ok())
    }

    fn select(&mut self, name: &str, auth: SelectAuth) -> Result<Reply, Reply> {
        if matches!(auth, SelectAuth::Plain(_)) {
            self.plain_allowed()?;
        }
        let ns = self
            .shared
            .engine
            .get(name)
            .ok_or(err("Namespace not found"))?;
        let writable = if name == DEFAULT_NS {
            match (&auth, &self.shared.admin_password) {
                (SelectAuth::None, _) => !self.shared.protect,
                (SelectAuth::Plain(p), Some(a)) if p[..] == *a.as_bytes() => true,
                (SelectAuth::Secure(h), Some(a)) => {
                    let a = a.clone();
                    self.check_secure(h, &a)?;
                    true
                }
                (SelectAuth::Plain(_), Some(_)) => {
                    self.denied = true;
                    return Err(err("Access denied"));
                }
                _ => return Err(err("Access denied")),
            }
        } else {
            let password = ns.lock().desc.password.clone();
            let public = ns.lock().desc.public;
            let unlocked = match (password, auth) {
                (None, _) => true,
                (Some(_), SelectAuth::None) if public => false,
                (Some(_), SelectAuth::None) => return Err(err("Namespace protected and private")),
                (Some(p), SelectAuth::Plain(given)) if given[..] == *p.as_bytes() => true,
                (Some(_), SelectAuth::Plain(_)) => {
                    self.denied = true;
                    return Err(err("Access denied"));
                }
                (Some(p), SelectAuth::Secure(h)) => {
                    self.check_secure(&h, &p)?;
                    true
                }
            };
            if unlocked && !self.unlocked.iter().any(|n| n == name) {
                self.unlocked.push(name.to_string());
            }
            unlocked
        };
        self.ns = ns;
        self.writable = writable;
        Ok(Reply::ok())
    }

    /// Whether `NSLIST`/`NSINFO` show `ns` to this connection: the admin sees every
    /// namespace; others see those anyone may open without a password (no password, or
    /// public), the one they are in, and those they selected with the password.
    fn may_see(&self, ns: &Arc<Namespace>) -> bool {
        if self.admin || Arc::ptr_eq(ns, &self.ns) || self.unlocked.iter().any(|n| *n == ns.name) {
            return true;
        }
        let st = ns.lock();
        st.desc.password.is_none() || st.desc.public
    }

    /// `HELLO`: RESP2 only. `HELLO 3` gets Redis's `-NOPROTO`, so that RESP3 clients
    /// (redis-py 8) fall back to RESP2; the reply is Redis's map as a flat array.
    fn hello(&mut self, proto: Option<u64>, password: Option<Bytes>) -> Result<Reply, Reply> {
        if proto.is_some_and(|p| p != 2) {
            return Err(err("NOPROTO sorry, this protocol version is not supported"));
        }
        if let Some(pw) = password {
            self.plain_allowed()?;
            let Some(admin) = self.shared.admin_password.clone() else {
                return Err(err(
                    "ERR AUTH <password> called without any password configured",
                ));
            };
            if pw[..] != *admin.as_bytes() {
                self.denied = true;
                return Err(err(
                    "WRONGPASS invalid username-password pair or user is disabled.",
                ));
            }
            self.admin = true;
        }
        let s = |t: &str| Reply::bulk(t.as_bytes());
        Ok(Reply::Array(vec![
            s("server"),
            s("zdb"),
            s("version"),
            s(env!("CARGO_PKG_VERSION")),
            s("proto"),
            Reply::Int(2),
            s("id"),
            Reply::Int(i64::try_from(self.id).unwrap_or(i64::MAX)),
            s("mode"),
            s("standalone"),
            s("role"),
            s("master"),
            s("modules"),
            Reply::Array(Vec::new()),
        ]))
    }

    fn nsset(&mut self, name: &str, prop: NsProp) -> Result<Reply, Reply> {
        self.require_admin()?;
        if !matches!(prop, NsProp::EncryptionKey(_)) {
            self.not_mirror()?;
        }
        let is_default = name == DEFAULT_NS;
        if is_default && !matches!(prop, NsProp::Mode(_) | NsProp::Lock(_) | NsProp::Freeze(_)) {
            return Err(err("Cannot update default namespace"));
        }
        let ns = self
            .shared
            .engine
            .get(name)
            .ok_or(err("Namespace not found"))?;
        let mut st = ns.lock();
        match prop {
            NsProp::MaxSize(n) => st.desc.maxsize = n,
            NsProp::Password(p) => st.desc.password = p,
            NsProp::Public(b) => st.desc.public = b,
            NsProp::Worm(b) => st.desc.worm = b,
            NsProp::Lock(b) => st.desc.lock = b,
            NsProp::Freeze(b) => st.desc.freeze = b,
            NsProp::Mode(m) => {
                if self.shared.engine.config().mode.is_some() {
                    return Err(err(
                        "This server instance is configured to use a single runtime mode",
                    ));
                }
                if st.desc.mode != m {
                    if !st.is_pristine() {
                        return Err(err("Cannot change mode on a non-empty namespace"));
                    }
                    st.set_mode(m);
                }
            }
            NsProp::EncryptionKey(secret) => {
                if !st.set_encryption_key(name, &secret).map_err(op_reply)? {
                    return Ok(Reply::ok()); // Unsealed: nothing to persist.
                }
            }
        }
        st.desc
            .save(&ns.index_dir)
            .map_err(|e| op_reply(e.into()))?;
        drop(st);
        self.shared
            .engine
            .fire("namespace-updated", vec![name.to_string()]);
        Ok(Reply::ok())
    }
}
