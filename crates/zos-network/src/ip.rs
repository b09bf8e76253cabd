//! Links, addresses, routes and namespaces through iproute2's `ip` (present on every zos host;
//! its error texts are clear and it keeps this crate free of netlink encoding).

use std::process::Stdio;

use tokio::process::Command;

/// What a failed `ip` invocation said.
#[derive(Debug, thiserror::Error)]
#[error("ip {args}: {message}")]
pub struct IpError {
    args: String,
    message: String,
}

impl IpError {
    /// An error of a step that is not one `ip` command.
    pub fn new(args: &str, message: &str) -> Self {
        IpError {
            args: args.into(),
            message: message.into(),
        }
    }
}

/// Runs `ip [-n NS] ARGS…`; the error carries the command line and `ip`'s stderr.
pub async fn ip(ns: Option<&str>, args: &[&str]) -> Result<String, IpError> {
    let mut full: Vec<&str> = Vec::with_capacity(args.len() + 2);
    if let Some(ns) = ns {
        full.extend(["-n", ns]);
    }
    full.extend_from_slice(args);
    let out = Command::new("ip")
        .args(&full)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| IpError {
            args: full.join(" "),
            message: format!("cannot run ip: {e}"),
        })?;
    if !out.status.success() {
        return Err(IpError {
            args: full.join(" "),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether the named network namespace exists (`/run/netns/NAME`).
pub fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

/// Creates the namespace unless it exists.
pub async fn netns_ensure(name: &str) -> Result<(), IpError> {
    if !netns_exists(name) {
        ip(None, &["netns", "add", name]).await?;
    }
    Ok(())
}

/// Deletes the namespace (absent is fine).
pub async fn netns_delete(name: &str) -> Result<(), IpError> {
    if netns_exists(name) {
        ip(None, &["netns", "del", name]).await?;
    }
    Ok(())
}

/// Whether link `name` exists in `ns` (or the current namespace).
pub async fn link_exists(ns: Option<&str>, name: &str) -> bool {
    ip(ns, &["link", "show", "dev", name]).await.is_ok()
}

/// A random locally administered unicast MAC for a bridge we create.
///
/// A bridge without an explicitly set address takes the lowest MAC among its ports, so
/// removing one port (one tenant's workload) can change the MAC behind the bridge's IP and
/// every neighbour's cached entry goes stale until it re-resolves (seen as 7–27 s of lost
/// traffic for the other tenants). An address given at creation is kept for good.
pub fn bridge_mac() -> String {
    let mut b: [u8; 6] = rand::random();
    b[0] = (b[0] & 0xfc) | 0x02;
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Creates bridge `name` in `ns` with a fixed MAC (see [`bridge_mac`]).
pub async fn bridge_add(ns: Option<&str>, name: &str) -> Result<(), IpError> {
    let mac = bridge_mac();
    ip(
        ns,
        &["link", "add", name, "address", &mac, "type", "bridge"],
    )
    .await
    .map(|_| ())
}

/// Deletes link `name` in `ns` when present.
pub async fn link_delete(ns: Option<&str>, name: &str) -> Result<(), IpError> {
    if link_exists(ns, name).await {
        ip(ns, &["link", "del", "dev", name]).await?;
    }
    Ok(())
}

/// The destinations of the routes on `dev` in `ns` that were added with protocol `static`
/// (ours; the kernel's connected routes are protocol `kernel`), as printed by `ip`.
pub async fn static_routes(ns: Option<&str>, dev: &str, v6: bool) -> Result<Vec<String>, IpError> {
    let fam = if v6 { "-6" } else { "-4" };
    let out = ip(ns, &[fam, "route", "show", "dev", dev, "proto", "static"]).await?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Loads an nftables script in `ns` (or the current namespace) with `nft -f -`.
pub async fn nft(ns: Option<&str>, script: &str) -> Result<(), IpError> {
    use tokio::io::AsyncWriteExt as _;
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "nft", "-f", "-"]);
            c
        }
        None => {
            let mut c = Command::new("nft");
            c.args(["-f", "-"]);
            c
        }
    };
    let args = format!("nft -f - (in {})", ns.unwrap_or("the node's namespace"));
    let fail = |message: String| IpError {
        args: args.clone(),
        message,
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| fail(format!("writing to nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| fail(format!("nft: {e}")))?;
    if !out.status.success() {
        return Err(fail(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

/// Sets sysctls (`key=value`) inside `ns` (or the current namespace).
pub async fn sysctl(ns: Option<&str>, settings: &[&str]) -> Result<(), IpError> {
    match ns {
        Some(ns) => {
            let mut args = vec!["netns", "exec", ns, "sysctl", "-qw"];
            args.extend_from_slice(settings);
            ip(None, &args).await.map(|_| ())
        }
        None => {
            let out = Command::new("sysctl")
                .arg("-qw")
                .args(settings)
                .stdin(Stdio::null())
                .output()
                .await
                .map_err(|e| IpError {
                    args: format!("sysctl {}", settings.join(" ")),
                    message: format!("cannot run sysctl: {e}"),
                })?;
            if !out.status.success() {
                return Err(IpError {
                    args: format!("sysctl {}", settings.join(" ")),
                    message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                });
            }
            Ok(())
        }
    }
}
