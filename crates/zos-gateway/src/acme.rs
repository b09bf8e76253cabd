//! ACME (RFC 8555) orders with HTTP-01 challenges, for nodes with a real public domain.
//!
//! The gateway's HTTP listener answers `/.well-known/acme-challenge/<token>` from the store's
//! challenge map while an order runs. Not exercised against a real CA here (the test hosts
//! cannot reach one); the challenge responder and the key/CSR side are unit-tested.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};

use crate::certs::CertError;

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Where and as whom to order certificates.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The CA's directory URL.
    pub directory: String,
    /// Contact e-mail (upstream uses `letsencrypt@threefold.tech`).
    pub email: String,
    /// The account credentials file (created on first order, owner only).
    pub account_file: PathBuf,
}

fn acme(e: impl std::fmt::Display) -> CertError {
    CertError::Acme(e.to_string())
}

async fn account(cfg: &AcmeConfig) -> Result<Account, CertError> {
    if let Ok(text) = std::fs::read_to_string(&cfg.account_file) {
        let creds: AccountCredentials = serde_json::from_str(&text).map_err(acme)?;
        return Account::builder()
            .map_err(acme)?
            .from_credentials(creds)
            .await
            .map_err(acme);
    }
    let contact = format!("mailto:{}", cfg.email);
    let (account, creds) = Account::builder()
        .map_err(acme)?
        .create(
            &NewAccount {
                contact: &[&contact],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            cfg.directory.clone(),
            None,
        )
        .await
        .map_err(acme)?;
    let text = serde_json::to_string(&creds).map_err(acme)?;
    if let Some(dir) = cfg.account_file.parent() {
        std::fs::create_dir_all(dir).map_err(|source| CertError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    std::fs::write(&cfg.account_file, text).map_err(|source| CertError::Io {
        path: cfg.account_file.clone(),
        source,
    })?;
    Ok(account)
}

/// Removes the order's tokens from the challenge map however the order ends.
struct Tokens<'a> {
    map: &'a Mutex<BTreeMap<String, String>>,
    tokens: Vec<String>,
}

impl Drop for Tokens<'_> {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        for t in &self.tokens {
            m.remove(t);
        }
    }
}

/// A key and a CSR for `names`: `(key PEM, CSR DER)`.
pub fn key_and_csr(names: &[String]) -> Result<(String, Vec<u8>), CertError> {
    let key = rcgen::KeyPair::generate().map_err(acme)?;
    let params = rcgen::CertificateParams::new(names.to_vec()).map_err(acme)?;
    let csr = params.serialize_request(&key).map_err(acme)?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}

/// Orders a certificate for `names` (HTTP-01): `(chain PEM, key PEM)`.
pub async fn order(
    cfg: &AcmeConfig,
    names: &[String],
    challenges: &Arc<Mutex<BTreeMap<String, String>>>,
) -> Result<(String, String), CertError> {
    if names.iter().any(|n| n.starts_with('*')) {
        return Err(CertError::Acme(
            "wildcard certificates need DNS-01, which this gateway does not run".into(),
        ));
    }
    let account = account(cfg).await?;
    let ids: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(acme)?;
    let mut tokens = Tokens {
        map: challenges,
        tokens: Vec::new(),
    };
    let mut auths = order.authorizations();
    while let Some(a) = auths.next().await {
        let mut a = a.map_err(acme)?;
        match a.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            s => return Err(CertError::Acme(format!("authorization is {s:?}"))),
        }
        let mut ch = a
            .challenge(ChallengeType::Http01)
            .ok_or_else(|| CertError::Acme("the CA offers no http-01 challenge".into()))?;
        let token = ch.token.clone();
        challenges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.clone(), ch.key_authorization().as_str().to_string());
        tokens.tokens.push(token);
        ch.set_ready().await.map_err(acme)?;
    }
    let status = order
        .poll_ready(&RetryPolicy::default())
        .await
        .map_err(acme)?;
    if status != OrderStatus::Ready {
        return Err(CertError::Acme(format!("order is {status:?}")));
    }
    let (key_pem, csr) = key_and_csr(names)?;
    order.finalize_csr(&csr).await.map_err(acme)?;
    let chain = order
        .poll_certificate(&RetryPolicy::default())
        .await
        .map_err(acme)?;
    Ok((chain, key_pem))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn csr_names_the_hosts() {
        use x509_parser::prelude::FromDer;
        let (key, csr) = key_and_csr(&["a.example.org".into()]).unwrap();
        assert!(key.contains("PRIVATE KEY"));
        let (_, req) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&csr).unwrap();
        let names: Vec<String> = req
            .requested_extensions()
            .into_iter()
            .flatten()
            .filter_map(|e| match e {
                x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) => Some(
                    san.general_names
                        .iter()
                        .filter_map(|g| match g {
                            x509_parser::extensions::GeneralName::DNSName(n) => Some(n.to_string()),
                            _ => None,
                        })
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(names, vec!["a.example.org".to_string()]);
    }

    #[tokio::test]
    async fn wildcards_are_refused_before_any_network() {
        let cfg = AcmeConfig {
            directory: "https://127.0.0.1:9/none".into(),
            email: "x@example.org".into(),
            account_file: "/nonexistent/acme.json".into(),
        };
        let m = Arc::new(Mutex::new(BTreeMap::new()));
        let e = order(&cfg, &["*.gw.example".into()], &m).await.unwrap_err();
        assert!(e.to_string().contains("DNS-01"), "{e}");
    }
}
