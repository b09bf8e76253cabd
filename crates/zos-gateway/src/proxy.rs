//! The reverse proxy: an HTTP listener (Host routing, ACME HTTP-01 answers) and an HTTPS
//! listener that reads the ClientHello's SNI first, then either passes the raw TLS stream
//! through to the backend (`tls_passthrough`) or terminates TLS with the gateway's certificate
//! and proxies HTTP/1.1 with keep-alive to the backend.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::certs::{CertStore, Resolver};
use crate::routes::{Route, Table};
use crate::sni::{SniError, client_hello_sni};

type Body = BoxBody<Bytes, hyper::Error>;

/// How long a client may take to send its ClientHello (and finish the handshake) or request
/// headers.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Client connections served at once per listener; more wait in the kernel's accept queue
/// (file descriptors are finite and shared with the rest of the node).
pub const MAX_CONNECTIONS: usize = 8192;

/// The backend connector of a route: plain TCP, from the route's namespace.
#[derive(Debug, Clone)]
pub struct NsConnector {
    pub(crate) netns: Option<String>,
}

impl tower::Service<Uri> for NsConnector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let netns = self.netns.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or("");
            let ip: std::net::IpAddr =
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse()
                    .map_err(|_| io::Error::other(format!("backend host {host:?} is not an IP")))?;
            let addr = SocketAddr::new(ip, uri.port_u16().unwrap_or(80));
            let s = crate::netns::connect(netns.as_deref(), addr).await?;
            Ok(TokioIo::new(s))
        })
    }
}

/// A keep-alive client pool over `conn`.
pub(crate) fn client(conn: NsConnector) -> Client<NsConnector, Body> {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(conn)
}

/// The shared state of the listeners.
pub struct Proxy {
    pub(crate) table: Arc<RwLock<Table>>,
    pub(crate) certs: Arc<CertStore>,
    tls: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").finish_non_exhaustive()
    }
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(msg.into()))
            .map_err(|n: Infallible| match n {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// `b`, adding the length of every data frame to `traffic`.
fn counted(b: Incoming, traffic: &Arc<AtomicU64>) -> Body {
    let t = traffic.clone();
    b.map_frame(move |f| {
        if let Some(d) = f.data_ref() {
            t.fetch_add(u64::try_from(d.len()).unwrap_or(0), Ordering::Relaxed);
        }
        f
    })
    .boxed()
}

/// Header names that belong to one hop (RFC 9110 §7.6.1) and are not forwarded.
const HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// The host a request is for: the URI authority or the Host header, without port, lowercase.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    let raw = match req.uri().host() {
        Some(h) => h.to_string(),
        None => {
            let h = req.headers().get(header::HOST)?.to_str().ok()?;
            let h = if h.starts_with('[') {
                h.split_inclusive(']').next().unwrap_or(h)
            } else {
                h.rsplit_once(':').map_or(h, |(a, _)| a)
            };
            h.to_string()
        }
    };
    Some(raw.trim_end_matches('.').to_ascii_lowercase())
}

/// Replays bytes already read from a stream before reading on.
struct Rewind<S> {
    pre: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.pre.len() {
            let n = buf.remaining().min(self.pre.len() - self.pos);
            let start = self.pos;
            buf.put_slice(&self.pre[start..start + n]);
            self.pos += n;
            if self.pos == self.pre.len() {
                self.pre = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Proxy {
    /// A proxy over `table`, serving certificates from `certs`.
    pub fn new(table: Arc<RwLock<Table>>, certs: Arc<CertStore>) -> Arc<Self> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| {
            // The ring provider supports the default versions; this cannot fail.
            rustls::ServerConfig::builder()
        })
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(certs.clone())));
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(Proxy {
            table,
            certs,
            tls: tokio_rustls::TlsAcceptor::from(Arc::new(cfg)),
        })
    }

    fn route(&self, host: &str) -> Option<Arc<Route>> {
        self.table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(host)
    }

    /// Serves plain HTTP on `l` until the task is aborted.
    pub async fn serve_http(self: Arc<Self>, l: TcpListener) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (s, peer) = match l.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "gateway http accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = s.set_nodelay(true);
            let me = self.clone();
            tokio::spawn(async move {
                me.serve_conn(s, peer, "http").await;
                drop(slot);
            });
        }
    }

    /// Serves TLS (terminated or passed through by SNI) on `l` until the task is aborted.
    pub async fn serve_https(self: Arc<Self>, l: TcpListener) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (s, peer) = match l.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "gateway https accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = s.set_nodelay(true);
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.tls_conn(s, peer).await {
                    tracing::debug!(%peer, error = %e, "gateway tls connection");
                }
                drop(slot);
            });
        }
    }

    async fn tls_conn(self: Arc<Self>, mut s: TcpStream, peer: SocketAddr) -> io::Result<()> {
        let mut buf = Vec::with_capacity(2048);
        let deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
        let sni = loop {
            match client_hello_sni(&buf) {
                Ok(sni) => break sni,
                Err(SniError::Incomplete) => {
                    let mut chunk = [0u8; 4096];
                    let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
                        .await
                        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "ClientHello"))??;
                    if n == 0 {
                        return Ok(());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        };
        let route = sni.as_deref().and_then(|h| self.route(h));
        if let Some(r) = route.filter(|r| r.passthrough) {
            let b = r
                .pick()
                .ok_or_else(|| io::Error::other("route without backends"))?;
            let mut up = crate::netns::connect(r.netns.as_deref(), b.addr).await?;
            up.write_all(&buf).await?;
            // Counted when the connection ends (the counter is cumulative, sampled hourly).
            let (a, b) = tokio::io::copy_bidirectional(&mut s, &mut up).await?;
            let n = a + b + u64::try_from(buf.len()).unwrap_or(0);
            r.traffic.fetch_add(n, Ordering::Relaxed);
            return Ok(());
        }
        // The handshake is bounded too: a client that stalls after its ClientHello must not
        // hold the connection forever.
        let accept = self.tls.accept(Rewind {
            pre: buf,
            pos: 0,
            inner: s,
        });
        let tls = tokio::time::timeout_at(deadline, accept)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake"))??;
        self.serve_conn(tls, peer, "https").await;
        Ok(())
    }

    async fn serve_conn<S>(self: Arc<Self>, s: S, peer: SocketAddr, proto: &'static str)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let me = self.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let me = me.clone();
            async move { Ok::<_, Infallible>(me.forward(req, peer, proto).await) }
        });
        let r = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HELLO_TIMEOUT)
            .keep_alive(true)
            .serve_connection(TokioIo::new(s), svc)
            .with_upgrades()
            .await;
        if let Err(e) = r {
            tracing::debug!(%peer, error = %e, "gateway http connection");
        }
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        proto: &'static str,
    ) -> Response<Body> {
        let Some(host) = request_host(&req) else {
            return text(StatusCode::BAD_REQUEST, "no Host\n");
        };
        if proto == "http" {
            if let Some(token) = req
                .uri()
                .path()
                .strip_prefix("/.well-known/acme-challenge/")
            {
                let answer = self
                    .certs
                    .challenges
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(token)
                    .cloned();
                if let Some(a) = answer {
                    return text(StatusCode::OK, a);
                }
            }
        }
        let Some(route) = self.route(&host).filter(|r| !r.passthrough) else {
            return text(StatusCode::NOT_FOUND, format!("no gateway for {host}\n"));
        };
        let Some(b) = route.pick() else {
            return text(StatusCode::BAD_GATEWAY, "no backend\n");
        };
        let pq = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let uri = match Uri::builder()
            .scheme("http")
            .authority(b.addr.to_string())
            .path_and_query(pq)
            .build()
        {
            Ok(u) => u,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        };
        *req.uri_mut() = uri;
        // An upgrade (WebSocket) keeps its Connection/Upgrade headers; the two upgraded
        // connections are joined once the backend switches protocols.
        let upgrade = req.headers().get(header::UPGRADE).cloned().filter(|_| {
            req.headers()
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| {
                    v.split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
                })
        });
        let client_side = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let h = req.headers_mut();
        for name in HOP {
            h.remove(name);
        }
        if let Some(u) = &upgrade {
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            h.insert(header::UPGRADE, u.clone());
        }
        if !h.contains_key(header::HOST) {
            if let Ok(v) = HeaderValue::from_str(&host) {
                h.insert(header::HOST, v);
            }
        }
        let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            h.insert("x-forwarded-for", v);
        }
        h.insert("x-forwarded-proto", HeaderValue::from_static(proto));
        if let Ok(v) = HeaderValue::from_str(&host) {
            h.insert("x-forwarded-host", v);
        }
        let req = req.map(|b| counted(b, &route.traffic));
        match route.client.request(req).await {
            Ok(mut resp) => {
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    if let Some(client_side) = client_side {
                        let backend_side = hyper::upgrade::on(&mut resp);
                        let traffic = route.traffic.clone();
                        tokio::spawn(async move {
                            match tokio::try_join!(client_side, backend_side) {
                                Ok((c, b)) => {
                                    let (mut c, mut b) = (TokioIo::new(c), TokioIo::new(b));
                                    if let Ok((x, y)) =
                                        tokio::io::copy_bidirectional(&mut c, &mut b).await
                                    {
                                        traffic.fetch_add(x + y, Ordering::Relaxed);
                                    }
                                }
                                Err(e) => tracing::debug!(error = %e, "gateway upgrade"),
                            }
                        });
                        return resp.map(|b| b.boxed());
                    }
                }
                let mut resp = resp.map(|b| counted(b, &route.traffic));
                for name in HOP {
                    resp.headers_mut().remove(name);
                }
                resp
            }
            Err(e) => {
                tracing::debug!(backend = %b.addr, error = %e, "gateway backend");
                text(
                    StatusCode::BAD_GATEWAY,
                    format!("backend {} unreachable\n", b.addr),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hosts_come_from_the_authority_or_the_host_header() {
        let r = Request::builder()
            .uri("/x")
            .header("host", "Web.GW.test:8443")
            .body(())
            .unwrap();
        assert_eq!(request_host(&r).unwrap(), "web.gw.test");
        let r = Request::builder()
            .uri("http://a.b.test./x")
            .body(())
            .unwrap();
        assert_eq!(request_host(&r).unwrap(), "a.b.test");
        let r = Request::builder()
            .uri("/")
            .header("host", "[fd00::1]:80")
            .body(())
            .unwrap();
        assert_eq!(request_host(&r).unwrap(), "[fd00::1]");
        let r = Request::builder().uri("/").body(()).unwrap();
        assert!(request_host(&r).is_none());
    }
}
