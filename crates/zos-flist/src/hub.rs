//! The flist hub: serves flists and their blocks over HTTP.
//!
//! | method & path | auth | behaviour |
//! |---|---|---|
//! | `GET /api/v1/flists` | – | `{"<twin>": [{name, size, md5, url}]}` |
//! | `GET /flists/{twin}/{name}.fl` | – | the `.fl` file |
//! | `GET /flists/{twin}/{name}.fl.md5` | – | md5 hex of the file (what zos' `FlistHash` reads) |
//! | `PUT /flists/{twin}/{name}.fl` | that twin | body = an `.fl`; checked to be one; 201 new / 200 replaced |
//! | `GET`/`HEAD /blocks/{hex[0..2]}/{hex}` and `/blocks/{hex}` | – | a block (the `http://` store layout: route `http://hub/blocks`) |
//! | `PUT /blocks/{hex}` | any known twin | body must hash (BLAKE2b-256) to `hex`; 201 new / 200 present |
//!
//! Signed requests carry `X-Zos-Twin`, `X-Zos-Timestamp` (unix seconds, ±5 min) and
//! `X-Zos-Signature` (hex) over [`signed_message`]; the twin's key comes from the hub's
//! allow-list (`--twin ID=ed25519:HEX`). Per-twin namespaces: a twin can only write under
//! `/flists/<its id>/`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use zos_types::PublicKey;

use crate::block::{BlockId, blake2b_256};
use crate::store::{DirStore, Store as _};

/// Largest accepted `.fl` upload.
pub const MAX_FLIST_BYTES: usize = 256 * 1024 * 1024;
/// Largest accepted block (a 512 KiB chunk that did not compress, plus snappy/GCM overhead).
pub const MAX_BLOCK_BYTES: usize = 1024 * 1024;
/// Accepted clock skew of signed requests.
pub const MAX_SKEW_SECS: i64 = 300;

/// Hub state.
#[derive(Debug, Clone)]
pub struct Hub {
    root: PathBuf,
    blocks: DirStore,
    twins: Arc<HashMap<u32, PublicKey>>,
}

/// The bytes a client signs.
pub fn signed_message(method: &str, path: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    format!(
        "zos-hub\n{method}\n{path}\n{timestamp}\n{}",
        hex::encode(blake2b_256(body))
    )
    .into_bytes()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn err(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, axum::Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

fn valid_name(name: &str) -> bool {
    name.len() <= 255
        && name.ends_with(".fl")
        && name.len() > 3
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

impl Hub {
    /// A hub keeping flists under `root/flists/<twin>/` and blocks in `root/blocks/`.
    pub fn new(root: PathBuf, twins: HashMap<u32, PublicKey>) -> Hub {
        let blocks = DirStore::new(root.join("blocks"));
        Hub {
            root,
            blocks,
            twins: Arc::new(twins),
        }
    }

    /// The axum router.
    pub fn router(self) -> axum::Router {
        axum::Router::new()
            .route("/api/v1/flists", get(list))
            .route("/flists/{twin}/{name}", get(download).put(upload))
            .route("/blocks/{a}", get(get_block).put(put_block))
            .route("/blocks/{prefix}/{hex}", get(get_block_fanout))
            .layer(DefaultBodyLimit::max(MAX_FLIST_BYTES))
            .with_state(self)
    }

    /// Checks a signed request; returns the twin id (or the ready error response, built
    /// once per refused request, so its size does not matter).
    #[allow(clippy::result_large_err)]
    fn authenticate(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<u32, Response> {
        let h = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (Some(twin), Some(ts), Some(sig)) =
            (h("x-zos-twin"), h("x-zos-timestamp"), h("x-zos-signature"))
        else {
            return Err(err(
                StatusCode::UNAUTHORIZED,
                "missing X-Zos-Twin/X-Zos-Timestamp/X-Zos-Signature",
            ));
        };
        let twin: u32 = twin
            .parse()
            .map_err(|_| err(StatusCode::BAD_REQUEST, "bad X-Zos-Twin"))?;
        let ts: i64 = ts
            .parse()
            .map_err(|_| err(StatusCode::BAD_REQUEST, "bad X-Zos-Timestamp"))?;
        if (now() - ts).abs() > MAX_SKEW_SECS {
            return Err(err(
                StatusCode::UNAUTHORIZED,
                "timestamp too far from the hub's clock",
            ));
        }
        let key = self
            .twins
            .get(&twin)
            .ok_or_else(|| err(StatusCode::FORBIDDEN, format!("twin {twin} is not allowed")))?;
        let sig =
            hex::decode(sig).map_err(|_| err(StatusCode::BAD_REQUEST, "bad signature hex"))?;
        if !key.verify(&signed_message(method.as_str(), path, ts, body), &sig) {
            tracing::warn!(twin, path, "hub: bad signature");
            return Err(err(StatusCode::UNAUTHORIZED, "bad signature"));
        }
        Ok(twin)
    }
}

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
/// One listed flist.
pub struct FlistInfo {
    /// File name (`x.fl`).
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// md5 hex of the file.
    pub md5: String,
    /// Download path on the hub.
    pub url: String,
}

async fn md5_of(path: &std::path::Path) -> std::io::Result<String> {
    use md5::Digest as _;
    let data = tokio::fs::read(path).await?;
    Ok(hex::encode(md5::Md5::digest(&data)))
}

async fn list(State(hub): State<Hub>) -> Response {
    let mut out: BTreeMap<String, Vec<FlistInfo>> = BTreeMap::new();
    let dir = hub.root.join("flists");
    let Ok(mut twins) = tokio::fs::read_dir(&dir).await else {
        return axum::Json(out).into_response();
    };
    while let Ok(Some(t)) = twins.next_entry().await {
        let twin = t.file_name().to_string_lossy().into_owned();
        let Ok(mut files) = tokio::fs::read_dir(t.path()).await else {
            continue;
        };
        let mut v = Vec::new();
        while let Ok(Some(f)) = files.next_entry().await {
            let name = f.file_name().to_string_lossy().into_owned();
            if !valid_name(&name) {
                continue;
            }
            let (Ok(meta), Ok(md5)) = (f.metadata().await, md5_of(&f.path()).await) else {
                continue;
            };
            v.push(FlistInfo {
                url: format!("/flists/{twin}/{name}"),
                name,
                size: meta.len(),
                md5,
            });
        }
        v.sort_by(|a, b| a.name.cmp(&b.name));
        out.insert(twin, v);
    }
    axum::Json(out).into_response()
}

async fn download(
    State(hub): State<Hub>,
    UrlPath((twin, name)): UrlPath<(u32, String)>,
) -> Response {
    let (file, md5) = match name.strip_suffix(".md5") {
        Some(n) => (n.to_string(), true),
        None => (name, false),
    };
    if !valid_name(&file) {
        return err(StatusCode::NOT_FOUND, "no such flist");
    }
    let path = hub.root.join("flists").join(twin.to_string()).join(&file);
    if md5 {
        return match md5_of(&path).await {
            Ok(h) => h.into_response(),
            Err(_) => err(StatusCode::NOT_FOUND, "no such flist"),
        };
    }
    match tokio::fs::read(&path).await {
        Ok(b) => (
            [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
            b,
        )
            .into_response(),
        Err(_) => err(StatusCode::NOT_FOUND, "no such flist"),
    }
}

async fn upload(
    State(hub): State<Hub>,
    method: Method,
    UrlPath((twin, name)): UrlPath<(u32, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/flists/{twin}/{name}");
    let signer = match hub.authenticate(&method, &path, &headers, &body) {
        Ok(t) => t,
        Err(r) => return r,
    };
    if signer != twin {
        return err(
            StatusCode::FORBIDDEN,
            format!("twin {signer} cannot write under twin {twin}"),
        );
    }
    if !valid_name(&name) {
        return err(StatusCode::BAD_REQUEST, "name must be [A-Za-z0-9._-]+.fl");
    }
    let dir = hub.root.join("flists").join(twin.to_string());
    if let Err(e) = tokio::fs::create_dir_all(&dir).await {
        return err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    let tmp = dir.join(format!(".{name}.{}.tmp", rand::random::<u64>()));
    if let Err(e) = tokio::fs::write(&tmp, &body).await {
        return err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    // Only real flists are published.
    let check = tokio::task::spawn_blocking({
        let tmp = tmp.clone();
        move || crate::meta::Reader::open(&tmp).map(|_| ())
    })
    .await;
    if !matches!(check, Ok(Ok(()))) {
        let _ = tokio::fs::remove_file(&tmp).await;
        let why = match check {
            Ok(Err(e)) => e.to_string(),
            _ => "check failed".into(),
        };
        return err(StatusCode::BAD_REQUEST, format!("not an flist: {why}"));
    }
    let target = dir.join(&name);
    let existed = tokio::fs::metadata(&target).await.is_ok();
    if let Err(e) = tokio::fs::rename(&tmp, &target).await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    tracing::info!(twin, name, bytes = body.len(), "hub: flist published");
    let code = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    (code, axum::Json(serde_json::json!({ "url": path }))).into_response()
}

async fn serve_block(hub: &Hub, hex: &str, method: &Method) -> Response {
    let Ok(id) = BlockId::from_hex(hex) else {
        return err(StatusCode::NOT_FOUND, "no such block");
    };
    match hub.blocks.get(&id).await {
        Ok(b) if method == Method::HEAD => {
            ([(axum::http::header::CONTENT_LENGTH, b.len().to_string())]).into_response()
        }
        Ok(b) => b.into_response(),
        Err(e) if e.is_not_found() => err(StatusCode::NOT_FOUND, "no such block"),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn get_block(
    State(hub): State<Hub>,
    method: Method,
    UrlPath(hex): UrlPath<String>,
) -> Response {
    serve_block(&hub, &hex, &method).await
}

async fn get_block_fanout(
    State(hub): State<Hub>,
    method: Method,
    UrlPath((prefix, hex)): UrlPath<(String, String)>,
) -> Response {
    if !hex.starts_with(&prefix) || prefix.len() != 2 {
        return err(StatusCode::NOT_FOUND, "no such block");
    }
    serve_block(&hub, &hex, &method).await
}

async fn put_block(
    State(hub): State<Hub>,
    method: Method,
    UrlPath(hex): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/blocks/{hex}");
    if let Err(r) = hub.authenticate(&method, &path, &headers, &body) {
        return r;
    }
    if body.len() > MAX_BLOCK_BYTES {
        return err(StatusCode::PAYLOAD_TOO_LARGE, "block too large");
    }
    let Ok(id) = BlockId::from_hex(&hex) else {
        return err(StatusCode::BAD_REQUEST, "bad block id");
    };
    if blake2b_256(&body) != id.0 {
        return err(
            StatusCode::BAD_REQUEST,
            "body does not hash to the block id",
        );
    }
    let existed = hub.blocks.exists(&id).await.unwrap_or(false);
    if let Err(e) = hub.blocks.set(&id, &body).await {
        return err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    if existed {
        StatusCode::OK.into_response()
    } else {
        StatusCode::CREATED.into_response()
    }
}

/// A client of the hub's signed endpoints.
pub struct HubClient {
    base: String,
    twin: u32,
    key: zos_types::KeyPair,
    http: reqwest::Client,
}

impl HubClient {
    /// A client for `base` (e.g. `http://127.0.0.1:8080`) signing as `twin`.
    pub fn new(base: &str, twin: u32, key: zos_types::KeyPair) -> HubClient {
        HubClient {
            base: base.trim_end_matches('/').to_string(),
            twin,
            key,
            http: crate::http_client().build().unwrap_or_default(),
        }
    }

    /// A signed PUT of `body` to `path`; returns the status.
    pub async fn put(&self, path: &str, body: Vec<u8>) -> Result<StatusCode, String> {
        let ts = now();
        let sig = self.key.sign(&signed_message("PUT", path, ts, &body));
        let resp = self
            .http
            .put(format!("{}{path}", self.base))
            .header("x-zos-twin", self.twin.to_string())
            .header("x-zos-timestamp", ts.to_string())
            .header("x-zos-signature", hex::encode(sig))
            .body(body)
            .send()
            .await
            .map_err(|e| format!("PUT {path}: {e}"))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(format!("PUT {path}: {status}: {text}"));
        }
        Ok(status)
    }

    /// Whether the hub has block `id`.
    pub async fn has_block(&self, id: &BlockId) -> Result<bool, String> {
        let hex = id.hex();
        let url = format!("{}/blocks/{}/{hex}", self.base, &hex[..2]);
        let r = self
            .http
            .head(&url)
            .send()
            .await
            .map_err(|e| format!("HEAD {url}: {e}"))?;
        Ok(r.status().is_success())
    }

    /// Uploads a block (content-addressed).
    pub async fn put_block(&self, id: &BlockId, blob: Vec<u8>) -> Result<(), String> {
        self.put(&format!("/blocks/{}", id.hex()), blob)
            .await
            .map(|_| ())
    }

    /// Publishes an `.fl` as `/flists/<twin>/<name>`; returns its path on the hub.
    pub async fn put_flist(&self, name: &str, bytes: Vec<u8>) -> Result<String, String> {
        let path = format!("/flists/{}/{name}", self.twin);
        self.put(&path, bytes).await?;
        Ok(path)
    }
}

/// `zos flist push`: copies every block of `flist` the hub lacks to the hub, then publishes a
/// copy of the `.fl` whose only route is the hub's block endpoint (`00-ff` →
/// `<hub>/blocks`), so anyone can mount it from the hub alone. Returns (blocks uploaded,
/// published path).
pub async fn push(
    flist: &crate::Flist,
    client: &HubClient,
    name: &str,
    parallel: usize,
) -> Result<(u64, String), String> {
    use futures::StreamExt as _;
    let blocks = flist.reader.all_blocks().map_err(|e| e.to_string())?;
    let results: Vec<Result<bool, String>> = futures::stream::iter(blocks.iter())
        .map(|b| async move {
            if client.has_block(&b.id).await? {
                return Ok(false);
            }
            let enc = flist.router.get(&b.id).await.map_err(|e| e.to_string())?;
            crate::block::decode(b, &enc).map_err(|e| e.to_string())?;
            client.put_block(&b.id, enc).await?;
            Ok(true)
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    let mut uploaded = 0;
    for r in results {
        if r? {
            uploaded += 1;
        }
    }
    // Rewrite the routes on a copy: the original keeps its own stores.
    let tmp = tempfile_path(flist.reader.path());
    std::fs::copy(flist.reader.path(), &tmp).map_err(|e| e.to_string())?;
    let rewrite = (|| -> Result<Vec<u8>, String> {
        let conn = rusqlite::Connection::open(&tmp).map_err(|e| e.to_string())?;
        conn.execute_batch("DELETE FROM route")
            .map_err(|e| e.to_string())?;
        conn.execute(
            "INSERT INTO route (start, end, url) VALUES (0, 255, ?)",
            [format!("{}/blocks", client.base)],
        )
        .map_err(|e| e.to_string())?;
        conn.close().map_err(|(_, e)| e.to_string())?;
        std::fs::read(&tmp).map_err(|e| e.to_string())
    })();
    let _ = std::fs::remove_file(&tmp);
    let path = client.put_flist(name, rewrite?).await?;
    Ok((uploaded, path))
}

fn tempfile_path(near: &std::path::Path) -> PathBuf {
    let dir = std::env::temp_dir();
    let stem = near
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.join(format!(".{stem}.{}.push", rand::random::<u64>()))
}

/// Serves `hub` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    hub: Hub,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, hub.router())
        .with_graceful_shutdown(shutdown)
        .await
}
