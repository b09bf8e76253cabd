//! Replication: `MIRROR` on a master turns a connection into a feed of every entry written,
//! namespace by namespace in write order; a server started with `--replicate-from` follows
//! such a feed and applies each entry exactly as the master stored it.
//!
//! Position: a mirror holds, per namespace, a prefix of the master's entries (versions and
//! tombstones, one file entry each), so the number of entries it holds *is* its position.
//! It sends those counts with `MIRROR <ns> <count>…` when it (re)connects; the master skips
//! that many entries and streams the rest, then follows new writes. Nothing extra is stored
//! and a `kill -9` of the mirror cannot make position and data disagree: recovery keeps a
//! prefix of what was written, and the count comes from what recovery kept.
//!
//! The feed reads the master's files (write buffer included) under the namespace lock, a
//! bounded batch at a time; writers only bump a counter and wake the feed when a mirror is
//! connected, so the write path gains no lock or system call.
//!
//! Wire (master → mirror, after `+OK`): RESP arrays of bulk strings:
//! `NS <ns> <descriptor text>` (exists, with these settings), `NSDEL <ns>`, `FLUSH <ns>`
//! (start again from nothing), `ENTRY <ns> <key> <flags> <ts> <crc> <length> <stored>`,
//! `PING` (every second of quiet).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::Replication;
use crate::descriptor::Descriptor;
use crate::engine::DEFAULT_NS;
use crate::format::Loc;
use crate::namespace::Namespace;
use crate::resp::{self, Reply};
use crate::session::Shared;

/// Entries read per namespace per turn (the lock is held for one batch).
const BATCH_ENTRIES: usize = 512;
/// Payload bytes read per batch.
const BATCH_BYTES: usize = 4 << 20;
/// Entries walked per lock hold when finding a mirror's start.
const SKIP_SLICE: u64 = 4096;
/// A feed with nothing to send says so this often; a mirror that hears nothing for
/// [`MASTER_SILENCE`] reconnects.
const PING_EVERY: Duration = Duration::from_secs(1);
const MASTER_SILENCE: Duration = Duration::from_secs(10);
/// Wait between reconnection attempts.
const RETRY: Duration = Duration::from_millis(500);

/// Where the feed is in one namespace of the master.
struct Cursor {
    ns: Arc<Namespace>,
    /// Last entry sent (`None`: nothing yet, start at the first).
    after: Option<Loc>,
    wipes: u64,
    desc: Option<Descriptor>,
}

fn frame(parts: &[&[u8]], out: &mut BytesMut) {
    Reply::Array(parts.iter().map(|p| Reply::bulk(p)).collect()).encode(out);
}

/// Serves `MIRROR` on `s` until the mirror leaves or the server closes. `have`: the mirror's
/// entry count per namespace.
pub(crate) async fn feed<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    shared: Arc<Shared>,
    have: Vec<(String, u64, String)>,
    mut close: watch::Receiver<bool>,
) {
    let engine = shared.engine.clone();
    let _active = engine.mirror_attached();
    tracing::info!(namespaces = have.len(), "mirror attached");
    let mut out = BytesMut::new();
    Reply::ok().encode(&mut out);
    let mut cursors: HashMap<String, Cursor> = HashMap::new();
    let have: HashMap<String, (u64, String)> =
        have.into_iter().map(|(n, c, s)| (n, (c, s))).collect();
    // Namespaces the mirror has and the master does not.
    for name in have.keys() {
        if engine.get(name).is_none() {
            if name == DEFAULT_NS {
                frame(&[b"FLUSH", name.as_bytes()], &mut out);
            } else {
                frame(&[b"NSDEL", name.as_bytes()], &mut out);
            }
        }
    }
    let mut scratch = [0u8; 512];
    let mut quiet_since = tokio::time::Instant::now();
    loop {
        let notified = engine.mirror_signal().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let sent_before = out.len();
        if let Err(e) = fill(&shared, &mut cursors, &have, &mut out).await {
            tracing::error!(error = %e, "mirror feed failed, closing it");
            return;
        }
        let busy = out.len() > sent_before;
        if !out.is_empty() {
            let w = tokio::select! {
                r = s.write_all(&out) => r,
                _ = close.changed() => return,
            };
            if w.is_err() {
                tracing::info!("mirror left");
                return;
            }
            out.clear();
            quiet_since = tokio::time::Instant::now();
        }
        if busy {
            continue;
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(quiet_since + PING_EVERY) => {
                frame(&[b"PING"], &mut out);
            }
            r = s.read(&mut scratch) => if !matches!(r, Ok(n) if n > 0) {
                tracing::info!("mirror left");
                return;
            },
            _ = close.changed() => return,
        }
    }
}

/// Appends to `out` what the mirror does not have yet, one batch per namespace.
async fn fill(
    shared: &Shared,
    cursors: &mut HashMap<String, Cursor>,
    have: &HashMap<String, (u64, String)>,
    out: &mut BytesMut,
) -> Result<(), crate::namespace::OpError> {
    let engine = &shared.engine;
    let names = engine.list();
    // Deleted on the master since the last turn.
    let gone: Vec<String> = cursors
        .keys()
        .filter(|n| !names.contains(n))
        .cloned()
        .collect();
    for name in gone {
        cursors.remove(&name);
        frame(&[b"NSDEL", name.as_bytes()], out);
    }
    for name in names {
        let Some(ns) = engine.get(&name) else {
            continue;
        };
        let fresh = cursors.get(&name).is_none_or(|c| !Arc::ptr_eq(&c.ns, &ns));
        if fresh {
            let replaced = cursors.contains_key(&name);
            let none = (0, "-".to_string());
            let (count, sig) = if replaced {
                &none
            } else {
                have.get(&name).unwrap_or(&none)
            };
            let cur = start(&ns, *count, sig, out, replaced).await?;
            cursors.insert(name.clone(), cur);
        }
        let Some(cur) = cursors.get_mut(&name) else {
            continue;
        };
        let batch = {
            let mut st = ns.lock();
            if st.wipes() != cur.wipes {
                cur.wipes = st.wipes();
                cur.after = None;
                frame(&[b"FLUSH", name.as_bytes()], out);
            }
            if cur.desc.as_ref() != Some(&st.desc) {
                cur.desc = Some(st.desc.clone());
                frame(&[b"NS", name.as_bytes(), st.desc.to_text().as_bytes()], out);
            }
            st.read_after(cur.after, BATCH_ENTRIES, BATCH_BYTES)?
        };
        for (loc, e, stored) in batch {
            frame(
                &[
                    b"ENTRY",
                    name.as_bytes(),
                    &e.key,
                    e.flags.to_string().as_bytes(),
                    e.timestamp.to_string().as_bytes(),
                    e.value_crc.to_string().as_bytes(),
                    e.length.to_string().as_bytes(),
                    &stored,
                ],
                out,
            );
            cur.after = Some(loc);
        }
    }
    Ok(())
}

/// Finds where the mirror's `have` entries end in `ns` (walking a slice at a time); a mirror
/// holding more than the master (the master was wiped meanwhile) starts again from nothing.
async fn start(
    ns: &Arc<Namespace>,
    have: u64,
    sig: &str,
    out: &mut BytesMut,
    replaced: bool,
) -> Result<Cursor, crate::namespace::OpError> {
    let (total, wipes) = {
        let st = ns.lock();
        (st.appended(), st.wipes())
    };
    let name = ns.name.as_bytes();
    let mut cur = Cursor {
        ns: ns.clone(),
        after: None,
        wipes,
        desc: None,
    };
    if replaced || have > total {
        frame(&[b"FLUSH", name], out);
        return Ok(cur);
    }
    if have == total {
        cur.after = ns.lock().last_entry();
    } else {
        let mut done = 0;
        while done < have {
            let (at, d) = ns.lock().skip_entries(cur.after, done, have, SKIP_SLICE)?;
            if d == done {
                break;
            }
            cur.after = at;
            done = d;
            tokio::task::yield_now().await;
        }
    }
    // Same count, other content (the master was wiped and written again): start over.
    if ns.lock().signature(cur.after)? != sig {
        tracing::info!(ns = %ns.name, have, "mirror's last entry differs, sending it all again");
        cur.after = None;
        frame(&[b"FLUSH", name], out);
    }
    Ok(cur)
}

/// A mirror's side: connects to the master, asks for what it lacks and applies the feed,
/// again after every disconnection, until the server closes.
pub(crate) async fn follow(
    shared: Arc<Shared>,
    repl: Replication,
    mut close: watch::Receiver<bool>,
) {
    loop {
        let r = tokio::select! {
            r = follow_once(&shared, &repl) => r,
            _ = close.changed() => return,
        };
        match r {
            Ok(()) => tracing::info!(master = %repl.master, "master closed the feed, reconnecting"),
            Err(e) => {
                tracing::warn!(master = %repl.master, error = %e, "replication interrupted, reconnecting")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = close.changed() => return,
        }
    }
}

async fn read_line<S: AsyncRead + Unpin>(s: &mut S, buf: &mut BytesMut) -> std::io::Result<String> {
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..i]).into_owned();
            buf.advance(i + 2);
            return Ok(line);
        }
        if buf.len() > 4096 || s.read_buf(buf).await? == 0 {
            return Err(std::io::Error::other("master closed before replying"));
        }
    }
}

async fn follow_once(shared: &Arc<Shared>, repl: &Replication) -> std::io::Result<()> {
    let mut s = tokio::net::TcpStream::connect(repl.master).await?;
    let _ = s.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(64 << 10);
    let mut req = BytesMut::new();
    if let Some(pw) = &repl.password {
        frame(&[b"AUTH", pw.as_bytes()], &mut req);
        s.write_all(&req).await?;
        req.clear();
        let line = read_line(&mut s, &mut buf).await?;
        if line != "+OK" {
            return Err(std::io::Error::other(format!("AUTH refused: {line}")));
        }
    }
    let engine = &shared.engine;
    let mut args: Vec<Vec<u8>> = vec![b"MIRROR".to_vec()];
    for name in engine.list() {
        if let Some(ns) = engine.get(&name) {
            let mut st = ns.lock();
            let n = st.appended();
            let last = st.last_entry();
            let sig = st.signature(last).map_err(std::io::Error::other)?;
            drop(st);
            args.push(name.into_bytes());
            args.push(n.to_string().into_bytes());
            args.push(sig.into_bytes());
        }
    }
    let parts: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
    frame(&parts, &mut req);
    s.write_all(&req).await?;
    let line = read_line(&mut s, &mut buf).await?;
    if line != "+OK" {
        return Err(std::io::Error::other(format!("MIRROR refused: {line}")));
    }
    tracing::info!(master = %repl.master, "following the master");
    loop {
        let mut touched: Vec<Arc<Namespace>> = Vec::new();
        loop {
            let frame = match resp::parse_request(&buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(std::io::Error::other(format!("bad feed: {e}"))),
            };
            let data: Bytes = buf.split_to(frame.len).freeze();
            let a: Vec<Bytes> = frame.args.iter().map(|r| data.slice(r.clone())).collect();
            if let Some(ns) = apply(shared, &a)? {
                if !touched.iter().any(|t| Arc::ptr_eq(t, &ns)) {
                    touched.push(ns);
                }
            }
        }
        let mut epoch = 0;
        for ns in touched {
            epoch = epoch.max(engine.flush(&ns).map_err(std::io::Error::other)?);
        }
        engine
            .sync_upto(epoch)
            .await
            .map_err(std::io::Error::other)?;
        buf.reserve(64 << 10);
        let n = tokio::time::timeout(MASTER_SILENCE, s.read_buf(&mut buf))
            .await
            .map_err(|_| std::io::Error::other("master silent for 10 s"))??;
        if n == 0 {
            return Ok(());
        }
    }
}

fn num<T: std::str::FromStr>(b: &[u8]) -> std::io::Result<T> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad number in feed"))
}

fn name_of(b: &[u8]) -> std::io::Result<String> {
    let n = String::from_utf8(b.to_vec()).map_err(|_| std::io::Error::other("bad name in feed"))?;
    if !crate::engine::valid_ns_name(&n) {
        return Err(std::io::Error::other("bad name in feed"));
    }
    Ok(n)
}

/// Applies one feed message; returns the namespace written to.
fn apply(shared: &Shared, a: &[Bytes]) -> std::io::Result<Option<Arc<Namespace>>> {
    let engine = &shared.engine;
    let other = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
    let get = |name: &str| {
        engine
            .get(name)
            .ok_or_else(|| std::io::Error::other(format!("feed names unknown namespace {name}")))
    };
    match (a.first().map(|b| &b[..]), a.len()) {
        (Some(b"PING"), 1) => Ok(None),
        (Some(b"NS"), 3) => {
            let name = name_of(&a[1])?;
            let desc = std::str::from_utf8(&a[2])
                .ok()
                .and_then(Descriptor::from_text)
                .ok_or_else(|| std::io::Error::other("bad descriptor in feed"))?;
            if engine.get(&name).is_none() {
                engine.create(&name).map_err(|e| other(&e))?;
            }
            let ns = get(&name)?;
            let mut st = ns.lock();
            if st.desc.mode != desc.mode && st.is_pristine() {
                st.set_mode(desc.mode);
            }
            let mode = st.desc.mode;
            st.desc = Descriptor { mode, ..desc };
            st.desc.save(&ns.index_dir).map_err(|e| other(&e))?;
            Ok(None)
        }
        (Some(b"NSDEL"), 2) => {
            let name = name_of(&a[1])?;
            if name != DEFAULT_NS {
                engine.delete(&name).map_err(|e| other(&e))?;
            }
            Ok(None)
        }
        (Some(b"FLUSH"), 2) => {
            // A namespace this mirror never had has nothing to wipe.
            let Some(ns) = engine.get(&name_of(&a[1])?) else {
                return Ok(None);
            };
            ns.lock().wipe().map_err(|e| other(&e))?;
            Ok(Some(ns))
        }
        (Some(b"ENTRY"), 8) => {
            let ns = get(&name_of(&a[1])?)?;
            ns.lock()
                .apply_replicated(
                    &a[2],
                    num(&a[3])?,
                    num(&a[4])?,
                    num(&a[5])?,
                    num(&a[6])?,
                    &a[7],
                )
                .map_err(|e| other(&e))?;
            Ok(Some(ns))
        }
        _ => Err(std::io::Error::other(format!(
            "unknown feed message {:?}",
            a.first().map(|b| String::from_utf8_lossy(b).into_owned())
        ))),
    }
}
