//! `http(s)://host[:port]/base`: read-only blocks at `<base>/<hex[0..2]>/<hex>`, falling back
//! to `<base>/<hex>` on 404 (upstream's http store, meant to front a `dir` store; the zos hub
//! serves exactly this layout).

use std::time::Duration;

use super::StoreError;
use crate::block::BlockId;

/// `e` and its causes ("error sending request" alone does not say that a certificate failed).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// Blocks over HTTP.
#[derive(Debug, Clone)]
pub struct HttpStore {
    base: String,
    client: reqwest::Client,
}

impl HttpStore {
    /// From `http://…` or `https://…` (https checked against the public web PKI).
    pub fn from_url(url: &str) -> Result<HttpStore, StoreError> {
        let u =
            reqwest::Url::parse(url).map_err(|e| StoreError::BadSpec(url.into(), e.to_string()))?;
        if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
            return Err(StoreError::BadSpec(
                url.into(),
                "expected http(s)://host/base".into(),
            ));
        }
        let client = crate::http_client()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| StoreError::BadSpec(url.into(), e.to_string()))?;
        Ok(HttpStore {
            base: url.trim_end_matches('/').to_string(),
            client,
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Backend {
            url: self.base.clone(),
            reason: e.to_string(),
        }
    }

    /// GET one URL: Ok(None) on 404.
    async fn fetch(&self, url: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let resp = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| self.err(with_causes(&e)))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.err(format!("GET {url}: {}", resp.status())));
        }
        let body = resp.bytes().await.map_err(|e| self.err(e))?;
        Ok(Some(body.to_vec()))
    }
}

#[async_trait::async_trait]
impl super::Store for HttpStore {
    async fn get(&self, id: &BlockId) -> Result<Vec<u8>, StoreError> {
        let hex = id.hex();
        if let Some(b) = self
            .fetch(&format!("{}/{}/{}", self.base, &hex[..2], hex))
            .await?
        {
            return Ok(b);
        }
        match self.fetch(&format!("{}/{}", self.base, hex)).await? {
            Some(b) => Ok(b),
            None => Err(StoreError::NotFound(*id)),
        }
    }

    async fn set(&self, _id: &BlockId, _blob: &[u8]) -> Result<(), StoreError> {
        Err(StoreError::ReadOnly(self.base.clone()))
    }

    fn url(&self) -> String {
        self.base.clone()
    }
}
