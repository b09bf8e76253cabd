//! The network side: TCP and unix-socket listeners, one tokio task per connection.
//!
//! Each connection reads what is available, executes every complete request in it, then
//! flushes the namespaces it wrote (and waits for the group fsync with `--sync`) and sends all
//! replies in one write. Buffers are bounded: the input holds at most one request beyond what
//! was parsed (≤ 8 MiB + framing), the output is written out whenever it passes 1 MiB. A slow
//! reader only stalls its own task; no lock is held while writing to a socket.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Notify, broadcast, watch};
use tokio::task::JoinSet;

use crate::command;
use crate::engine::{Engine, EngineConfig};
use crate::namespace::{DiskRead, OpError};
use crate::resp::{self, Reply};
use crate::session::{Outcome, Session, Shared, op_reply};
use crate::{ServerConfig, ZdbError};

/// Bytes asked from the socket per read.
const READ_CHUNK: usize = 64 * 1024;
/// Output size that triggers a write before the rest of the input is processed.
const OUT_HIGH_WATER: usize = 1 << 20;
/// How long shutdown waits for connections to finish their current batch.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A bound server, ready to [`Server::run`].
pub struct Server {
    shared: Arc<Shared>,
    tcp: Option<TcpListener>,
    unix: Option<(UnixListener, PathBuf)>,
    stop: Arc<Notify>,
}

impl Server {
    /// Opens the storage (recovering it if needed) and binds the sockets.
    pub async fn bind(cfg: ServerConfig) -> Result<Server, ZdbError> {
        if cfg.listen.is_none() && cfg.socket.is_none() {
            return Err(ZdbError::Config(
                "nothing to listen on: give a TCP address or a unix socket".into(),
            ));
        }
        let ecfg = EngineConfig {
            data_dir: cfg.data_dir.clone(),
            index_dir: cfg.index_dir.clone(),
            mode: cfg.mode,
            sync: cfg.sync,
            datasize: cfg.datasize,
            cache_bytes: cfg.cache_bytes,
        };
        let engine = tokio::task::spawn_blocking(move || Engine::open(ecfg))
            .await
            .map_err(|e| ZdbError::Config(format!("storage open task failed: {e}")))??;
        let tcp = match cfg.listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ZdbError::Bind {
                        what: addr.to_string(),
                        source,
                    })?,
            ),
            None => None,
        };
        let unix = match &cfg.socket {
            Some(path) => {
                // A socket file left by a previous run would make bind fail.
                if std::fs::symlink_metadata(path).is_ok_and(|m| !m.is_dir()) {
                    let _ = std::fs::remove_file(path);
                }
                let l = UnixListener::bind(path).map_err(|source| ZdbError::Bind {
                    what: path.display().to_string(),
                    source,
                })?;
                Some((l, path.clone()))
            }
            None => None,
        };
        let shared = Arc::new(Shared {
            engine: Arc::new(engine),
            admin_password: cfg.admin_password.filter(|p| !p.is_empty()),
            protect: cfg.protect,
            debug: cfg.debug,
            instance_id: rand::random(),
            started: Instant::now(),
            commands: Default::default(),
            clients: Default::default(),
            net_in: Default::default(),
            net_out: Default::default(),
            read_ewma_ns: Default::default(),
        });
        tracing::info!(tcp = ?tcp.as_ref().and_then(|l| l.local_addr().ok()), socket = ?cfg.socket, "zdb listening");
        Ok(Server {
            shared,
            tcp,
            unix,
            stop: Arc::new(Notify::new()),
        })
    }

    /// The bound TCP address (with the real port when port 0 was asked).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` completes (or `STOP` in debug mode), then lets connections
    /// finish their current batch and flushes and fsyncs every namespace.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ZdbError> {
        let (close_tx, close_rx) = watch::channel(false);
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = self.stop.notified() => break,
                r = accept_tcp(&self.tcp) => match r {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        conns.spawn(serve(s, self.shared.clone(), close_rx.clone(), self.stop.clone()));
                    }
                    Err(e) => accept_failed(e).await,
                },
                r = accept_unix(&self.unix) => match r {
                    Ok(s) => {
                        conns.spawn(serve(s, self.shared.clone(), close_rx.clone(), self.stop.clone()));
                    }
                    Err(e) => accept_failed(e).await,
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        tracing::info!("zdb shutting down");
        let _ = close_tx.send(true);
        if tokio::time::timeout(DRAIN_TIMEOUT, async {
            while conns.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            conns.abort_all();
        }
        if let Some((_, path)) = &self.unix {
            let _ = std::fs::remove_file(path);
        }
        let engine = self.shared.engine.clone();
        tokio::task::spawn_blocking(move || engine.close())
            .await
            .map_err(|e| ZdbError::Config(format!("close task failed: {e}")))?
    }
}

async fn accept_tcp(l: &Option<TcpListener>) -> std::io::Result<tokio::net::TcpStream> {
    match l {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

async fn accept_unix(
    l: &Option<(UnixListener, PathBuf)>,
) -> std::io::Result<tokio::net::UnixStream> {
    match l {
        Some((l, _)) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

/// Out of file descriptors and similar: back off instead of spinning.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

struct ClientGuard(Arc<Shared>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one connection until EOF, error, `STOP` or server shutdown.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    shared: Arc<Shared>,
    mut close: watch::Receiver<bool>,
    stop: Arc<Notify>,
) {
    shared.clients.fetch_add(1, Ordering::Relaxed);
    let _guard = ClientGuard(shared.clone());
    let mut session = Session::new(shared.clone());
    let mut inbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = BytesMut::with_capacity(READ_CHUNK);
    let mut deferred = Deferred::default();
    loop {
        if inbuf.capacity() - inbuf.len() < READ_CHUNK / 4 {
            inbuf.reserve(READ_CHUNK);
        }
        let n = tokio::select! {
            r = s.read_buf(&mut inbuf) => match r { Ok(n) => n, Err(_) => return },
            _ = close.changed() => return,
        };
        if n == 0 {
            return;
        }
        shared.net_in.fetch_add(n as u64, Ordering::Relaxed);
        let mut close_after = false;
        let mut stop_after = false;
        loop {
            let blank = resp::blank_prefix(&inbuf);
            inbuf.advance(blank);
            let frame = match resp::parse_request(&inbuf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    Reply::err(e.to_string()).encode(&mut out);
                    close_after = true;
                    break;
                }
            };
            let data: Bytes = inbuf.split_to(frame.len).freeze();
            let args: Vec<Bytes> = frame.args.iter().map(|r| data.slice(r.clone())).collect();
            let outcome = match command::parse(&args) {
                Ok(cmd) => session.execute(cmd),
                Err(e) => Outcome::Reply(Reply::err(e.0)),
            };
            match outcome {
                Outcome::Reply(r) => r.encode(&mut out),
                Outcome::Close(r) => {
                    r.encode(&mut out);
                    close_after = true;
                    break;
                }
                Outcome::Read(read) => {
                    // Disk-bound reads go to the blocking pool, all those of this batch in
                    // one trip, so that they do not stall the other connections of this
                    // worker; page-cache reads stay here.
                    if shared.reads_are_slow() {
                        deferred.push(&mut out, read);
                    } else {
                        let (r, took) = timed_read(read);
                        shared.note_read(took);
                        encode_read(r, &mut out);
                    }
                }
                Outcome::Stop(r) => {
                    r.encode(&mut out);
                    close_after = true;
                    stop_after = true;
                    break;
                }
                Outcome::Wait {
                    ns,
                    rx,
                    command,
                    timeout,
                } => {
                    let committed =
                        commit(&mut s, &mut out, &mut deferred, &mut session, &shared).await;
                    let r = match committed {
                        Ok(()) => tokio::select! {
                            r = wait_for(rx, &command, timeout) => Some(r),
                            _ = close.changed() => None,
                        },
                        Err(_) => None,
                    };
                    ns.unsubscribe();
                    let Some(r) = r else { return };
                    r.encode(&mut out);
                }
            }
            if out.len() + deferred.bytes >= OUT_HIGH_WATER
                && commit(&mut s, &mut out, &mut deferred, &mut session, &shared)
                    .await
                    .is_err()
            {
                return;
            }
        }
        if commit(&mut s, &mut out, &mut deferred, &mut session, &shared)
            .await
            .is_err()
        {
            return;
        }
        if stop_after {
            tracing::info!("STOP received (debug mode)");
            stop.notify_one();
        }
        if close_after {
            let _ = s.shutdown().await;
            return;
        }
    }
}

fn timed_read(read: DiskRead) -> (Result<Bytes, OpError>, Duration) {
    let t = Instant::now();
    let r = read.run();
    (r, t.elapsed())
}

fn encode_read(r: Result<Bytes, OpError>, out: &mut BytesMut) {
    match r {
        Ok(v) => Reply::Bulk(v),
        Err(e) => op_reply(e),
    }
    .encode(out);
}

/// Value reads put off to the end of the input batch, each with the replies that precede it.
#[derive(Default)]
struct Deferred {
    parts: Vec<(BytesMut, DiskRead)>,
    /// Bytes the reads will return (counted against the output high-water mark).
    bytes: usize,
}

impl Deferred {
    fn push(&mut self, out: &mut BytesMut, read: DiskRead) {
        self.bytes += read.bytes();
        self.parts.push((out.split(), read));
    }

    /// Runs the reads in one blocking task and puts every reply back in its place in `out`.
    async fn resolve(&mut self, out: &mut BytesMut, shared: &Shared) {
        if self.parts.is_empty() {
            return;
        }
        self.bytes = 0;
        let (befores, reads): (Vec<BytesMut>, Vec<DiskRead>) =
            std::mem::take(&mut self.parts).into_iter().unzip();
        let count = reads.len();
        let done = tokio::task::spawn_blocking(move || {
            reads.into_iter().map(timed_read).collect::<Vec<_>>()
        })
        .await
        .unwrap_or_else(|e| {
            // Only a panic gets here; every read still gets a reply, so that the client's
            // replies stay aligned with its requests.
            tracing::error!(error = %e, count, "deferred read task failed");
            (0..count)
                .map(|_| (Err(OpError::Client("Internal Error")), Duration::ZERO))
                .collect()
        });
        let tail = out.split();
        for (before, (r, took)) in befores.into_iter().zip(done) {
            shared.note_read(took);
            out.unsplit(before);
            encode_read(r, out);
        }
        out.unsplit(tail);
    }
}

/// Makes this session's writes durable as configured, then sends the pending replies.
/// On a storage failure nothing is sent: the client must not see an acknowledgement.
async fn commit<S: AsyncWrite + Unpin>(
    s: &mut S,
    out: &mut BytesMut,
    deferred: &mut Deferred,
    session: &mut Session,
    shared: &Shared,
) -> std::io::Result<()> {
    deferred.resolve(out, shared).await;
    let mut epoch = 0;
    let touched = session.take_touched();
    if !touched.is_empty() {
        // Let the other ready connections append first: appends share the namespace's buffer,
        // so the first flush after them writes them all and the later ones find nothing to
        // write. That is one write(2) per round of ready clients instead of one per client,
        // as Redis does with its AOF buffer. With nobody else ready this returns at once.
        tokio::task::yield_now().await;
    }
    for ns in touched {
        match shared.engine.flush(&ns) {
            Ok(e) => epoch = epoch.max(e),
            Err(e) => {
                tracing::error!(ns = %ns.name, error = %e, "flush failed, closing the connection unacknowledged");
                return Err(std::io::Error::other(e));
            }
        }
    }
    if let Err(e) = shared.engine.sync_upto(epoch).await {
        tracing::error!(error = %e, "fsync failed, closing the connection unacknowledged");
        return Err(std::io::Error::other(e));
    }
    if !out.is_empty() {
        s.write_all(out).await?;
        shared
            .net_out
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        out.clear();
    }
    Ok(())
}

async fn wait_for(
    mut rx: broadcast::Receiver<&'static str>,
    command: &str,
    timeout: Duration,
) -> Reply {
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return Reply::err("Timeout"),
            r = rx.recv() => match r {
                Ok(name) if command == "*" || name == command => return Reply::Simple(name.into()),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return Reply::err("Timeout"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServerConfig;
    use tokio::net::TcpStream;

    fn resp(commands: &[&[&str]]) -> Vec<u8> {
        let mut out = Vec::new();
        for args in commands {
            out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
            for a in *args {
                out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
            }
        }
        out
    }

    /// With reads classed as slow, GETs of a pipeline are deferred to one blocking task; every
    /// reply must still come back in request order, between the replies around it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn deferred_reads_keep_reply_order() {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::bind(ServerConfig {
            data_dir: dir.path().join("data"),
            index_dir: dir.path().join("index"),
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            cache_bytes: 0, // every GET reads the data file
            ..ServerConfig::default()
        })
        .await
        .unwrap();
        let addr = server.local_addr().unwrap();
        let shared = server.shared.clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stop_rx.await;
        }));

        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(&resp(&[&["SET", "a", "1111"], &["SET", "b", "22"]]))
            .await
            .unwrap();
        let mut buf = vec![0u8; 64];
        let mut got = Vec::new();
        while got.len() < b"$1\r\na\r\n$1\r\nb\r\n".len() {
            let n = c.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        // Far above the threshold; real reads pull it down by 1/8 each, slowly enough here.
        shared.read_ewma_ns.store(u64::MAX / 4, Ordering::SeqCst);
        assert!(shared.reads_are_slow());
        let pipeline = resp(&[
            &["GET", "a"],
            &["PING"],
            &["GET", "b"],
            &["GET", "nope"],
            &["GET", "a"],
            &["DBSIZE"],
        ]);
        c.write_all(&pipeline).await.unwrap();
        let want: &[u8] = b"$4\r\n1111\r\n+PONG\r\n$2\r\n22\r\n$-1\r\n$4\r\n1111\r\n:2\r\n";
        let mut got = Vec::new();
        while got.len() < want.len() {
            let n = c.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed early after {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
        assert!(
            shared.reads_are_slow(),
            "the test must have used the deferred path"
        );
        drop(c);
        let _ = stop_tx.send(());
        task.await.unwrap().unwrap();
    }
}
