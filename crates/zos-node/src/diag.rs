//! Read-only diagnostics for the farm's twin (`zos.admin.diag.*`): the agent's recent logs
//! from a bounded in-memory ring fed by a tracing layer, btrfs device error counters,
//! routes and namespaces, a bounded reachability test, and the self-check summary.
//!
//! Nothing here changes the node: every probe only reads (`/proc`, `ip -j … show`,
//! `btrfs device stats` without `-z`) or opens one outgoing TCP connection / ping that the
//! caller bounds and this module caps.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

/// Events kept in the ring (the oldest go first).
pub const RING_CAPACITY: usize = 4096;
/// Longest message or field value kept, in bytes.
const MAX_TEXT: usize = 2048;
/// Most events one `logs` call returns.
pub const MAX_LOG_LINES: usize = 1000;
/// Upper bound of a reachability test's timeout.
pub const MAX_REACH_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound of pings per reachability test.
pub const MAX_PINGS: u32 = 5;
/// Bound of every external command a probe runs.
const CMD_TIMEOUT: Duration = Duration::from_secs(5);

/// One tracing event as kept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogEvent {
    /// Position in the ring since start (never reused).
    pub seq: u64,
    /// Unix milliseconds.
    pub ts_ms: u64,
    /// `ERROR`, `WARN`, `INFO`, `DEBUG`, `TRACE`.
    pub level: String,
    /// The module that logged it.
    pub target: String,
    /// The message.
    pub message: String,
    /// The event's other fields (`twin`, `contract`, `name`, `error`…), as text.
    pub fields: BTreeMap<String, String>,
}

/// The bounded event ring.
#[derive(Debug, Default)]
pub struct LogRing {
    inner: Mutex<(u64, VecDeque<LogEvent>)>,
}

/// The process-wide ring the [`RingLayer`] fills (one agent per process in production; the
/// tests' in-process nodes share it and filter by deployment).
pub fn ring() -> &'static LogRing {
    static RING: OnceLock<LogRing> = OnceLock::new();
    RING.get_or_init(LogRing::default)
}

fn clip(mut s: String) -> String {
    if s.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

impl LogRing {
    /// Appends one event, dropping the oldest beyond [`RING_CAPACITY`].
    pub fn push(&self, mut ev: LogEvent) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.0 += 1;
        ev.seq = g.0;
        if g.1.len() >= RING_CAPACITY {
            g.1.pop_front();
        }
        g.1.push_back(ev);
    }

    /// The newest events matching `q`, oldest first.
    pub fn query(&self, q: &LogQuery) -> Vec<LogEvent> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let limit = q.limit.unwrap_or(200).min(MAX_LOG_LINES);
        let mut out: Vec<LogEvent> =
            g.1.iter()
                .rev()
                .filter(|e| q.matches(e))
                .take(limit)
                .cloned()
                .collect();
        out.reverse();
        out
    }
}

/// Which events `zos.admin.diag.logs` returns.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogQuery {
    /// Only events about this contract (field `contract`).
    pub contract_id: Option<u64>,
    /// Only events about this twin (field `twin`).
    pub twin_id: Option<u32>,
    /// Only events about this workload (field `name`, or its workload id in `wlid`).
    pub workload: Option<String>,
    /// Minimum level (`error`, `warn`, `info`, `debug`, `trace`).
    pub level: Option<String>,
    /// Only events after this sequence number (follow mode).
    pub after: Option<u64>,
    /// At most this many (default 200, capped at [`MAX_LOG_LINES`]).
    pub limit: Option<usize>,
}

fn level_rank(l: &str) -> u8 {
    match l.to_ascii_lowercase().as_str() {
        "error" => 0,
        "warn" => 1,
        "info" => 2,
        "debug" => 3,
        _ => 4,
    }
}

impl LogQuery {
    fn field(e: &LogEvent, names: &[&str]) -> Option<String> {
        names.iter().find_map(|n| e.fields.get(*n).cloned())
    }

    fn matches(&self, e: &LogEvent) -> bool {
        if self.after.is_some_and(|a| e.seq <= a) {
            return false;
        }
        if let Some(l) = &self.level {
            if level_rank(&e.level) > level_rank(l) {
                return false;
            }
        }
        if let Some(c) = self.contract_id {
            if Self::field(e, &["contract", "contract_id"]) != Some(c.to_string()) {
                return false;
            }
        }
        if let Some(t) = self.twin_id {
            if Self::field(e, &["twin", "twin_id"]) != Some(t.to_string()) {
                return false;
            }
        }
        if let Some(w) = &self.workload {
            let by_name = Self::field(e, &["name", "workload"]).as_deref() == Some(w.as_str());
            let by_id = Self::field(e, &["wlid", "workload_id"]).as_deref() == Some(w.as_str());
            if !by_name && !by_id {
                return false;
            }
        }
        true
    }
}

/// The tracing layer that feeds [`ring`]: add it to the process's subscriber.
#[derive(Debug, Default, Clone, Copy)]
pub struct RingLayer;

#[derive(Default)]
struct Fields {
    message: String,
    fields: BTreeMap<String, String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}

impl Fields {
    fn put(&mut self, field: &Field, v: String) {
        if field.name() == "message" {
            self.message = clip(v);
        } else if self.fields.len() < 32 {
            self.fields.insert(field.name().to_string(), clip(v));
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RingLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let meta = event.metadata();
        ring().push(LogEvent {
            seq: 0,
            ts_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            level: meta.level().to_string(),
            target: meta.target().to_string(),
            message: f.message,
            fields: f.fields,
        });
    }
}

/// Runs a read-only command with [`CMD_TIMEOUT`]; its stdout, or why it gave none.
async fn run(prog: &str, args: &[&str]) -> Result<String, String> {
    let fut = tokio::process::Command::new(prog)
        .args(args)
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(CMD_TIMEOUT, fut).await {
        Err(_) => Err(format!("{prog} timed out after {CMD_TIMEOUT:?}")),
        Ok(Err(e)) => Err(format!("{prog}: {e}")),
        Ok(Ok(o)) if !o.status.success() => Err(format!(
            "{prog} {}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(Ok(o)) => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
    }
}

/// `ip -j ARGS` as JSON, or `{"error": …}`.
async fn ip_json(args: &[&str]) -> Value {
    let mut a = vec!["-j"];
    a.extend_from_slice(args);
    match run("ip", &a).await {
        Ok(out) if out.trim().is_empty() => json!([]),
        Ok(out) => serde_json::from_str(&out).unwrap_or_else(|e| json!({ "error": e.to_string() })),
        Err(e) => json!({ "error": e }),
    }
}

/// Interfaces (addresses, state), routes (v4, v6) and network namespaces, as `ip` sees
/// them from the agent.
pub async fn net() -> Value {
    json!({
        "interfaces": ip_json(&["address", "show"]).await,
        "routes": ip_json(&["route", "show"]).await,
        "routes6": ip_json(&["-6", "route", "show"]).await,
        "namespaces": ip_json(&["netns", "list"]).await,
    })
}

/// Most kernel lines one `kernel` call returns.
pub const MAX_KERNEL_LINES: usize = 1000;

/// `zos.admin.diag.kernel`: the last kernel messages.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KernelArg {
    /// How many of the newest lines (default 100, capped at [`MAX_KERNEL_LINES`]).
    pub lines: Option<usize>,
    /// Only warnings and worse.
    pub warnings: bool,
}

/// The newest kernel ring-buffer lines (`dmesg`, read only: never `--clear`).
pub async fn kernel(a: &KernelArg) -> Value {
    let n = a.lines.unwrap_or(100).clamp(1, MAX_KERNEL_LINES);
    let mut args = vec!["--kernel", "--nopager"];
    if a.warnings {
        args.extend(["--level", "emerg,alert,crit,err,warn"]);
    }
    match run("dmesg", &args).await {
        Ok(out) => {
            let all: Vec<&str> = out.lines().collect();
            let tail = &all[all.len().saturating_sub(n)..];
            json!({ "lines": tail })
        }
        Err(e) => json!({ "error": e }),
    }
}

/// Parses `btrfs device stats` output (`[/dev/loop0].write_io_errs   0`) into
/// device → counter → value; lines that do not parse are skipped.
pub fn parse_device_stats(out: &str) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut m: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for line in out.lines() {
        let mut it = line.split_whitespace();
        let (Some(key), Some(val)) = (it.next(), it.next()) else {
            continue;
        };
        let Some((dev, counter)) = key.strip_prefix('[').and_then(|k| k.split_once("].")) else {
            continue;
        };
        if let Ok(v) = val.parse::<u64>() {
            m.entry(dev.to_string())
                .or_default()
                .insert(counter.to_string(), v);
        }
    }
    m
}

/// `btrfs scrub status` text (`Status:           finished`, `Error summary:    no errors
/// found`, or `no stats available`) as `{key: value}` with lower-case snake keys; lines
/// without a `key: value` shape are kept under `note`.
pub fn parse_scrub_status(out: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match line.split_once(':') {
            Some((k, v)) if !k.is_empty() && k.len() <= 40 && !v.trim().is_empty() => {
                let key = k.trim().to_ascii_lowercase().replace([' ', '-'], "_");
                m.insert(key, v.trim().to_string());
            }
            _ => {
                m.entry("note".to_string())
                    .and_modify(|n: &mut String| {
                        n.push_str("; ");
                        n.push_str(line);
                    })
                    .or_insert_with(|| line.to_string());
            }
        }
    }
    m
}

/// A parsed `btrfs scrub status -R` with `errors`: the sum of its `*_errors` counters (read,
/// csum, verify, super, uncorrectable, corrected… what the last scrub met), 0 when none ran.
pub fn scrub_json(m: &BTreeMap<String, String>) -> Value {
    let errors: u64 = m
        .iter()
        .filter(|(k, _)| k.ends_with("_errors"))
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .fold(0u64, u64::saturating_add);
    let mut v = json!(m);
    v["errors"] = json!(errors);
    v
}

/// Every btrfs filesystem mounted in the agent's view, with its device error counters.
pub async fn btrfs_stats() -> Vec<Value> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 || f[2] != "btrfs" || !seen.insert(f[0].to_string()) {
            continue; // one entry per filesystem (subvolumes are mounted too)
        }
        let path = f[1].replace("\\040", " ");
        let stats = match run("btrfs", &["device", "stats", &path]).await {
            Ok(s) => json!(parse_device_stats(&s)),
            Err(e) => json!({ "error": e }),
        };
        let errors: u64 = stats
            .as_object()
            .map(|o| {
                o.values()
                    .filter_map(Value::as_object)
                    .flat_map(|c| c.values().filter_map(Value::as_u64))
                    .sum()
            })
            .unwrap_or(0);
        // The last scrub's outcome with raw counters ("no stats available" when none ran):
        // read only.
        let scrub = match run("btrfs", &["scrub", "status", "-R", &path]).await {
            Ok(s) => scrub_json(&parse_scrub_status(&s)),
            Err(e) => json!({ "error": e }),
        };
        out.push(json!({ "device": f[0], "mount": path, "stats": stats, "errors": errors, "scrub": scrub }));
    }
    out
}

/// Runs a read-only command with [`CMD_TIMEOUT`]; its exit code and stdout whatever the code
/// (`smartctl` reports findings in its exit status bits and still prints its JSON).
async fn run_any(prog: &str, args: &[&str]) -> Result<(i32, String), String> {
    let fut = tokio::process::Command::new(prog)
        .args(args)
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(CMD_TIMEOUT, fut).await {
        Err(_) => Err(format!("{prog} timed out after {CMD_TIMEOUT:?}")),
        Ok(Err(e)) => Err(format!("{prog}: {e}")),
        Ok(Ok(o)) => Ok((
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )),
    }
}

/// SMART health of the devices under the node's btrfs pools (`smartctl -j -H -A`), or why
/// there is none: `smartctl` not installed, or a device without SMART (loop files, most
/// virtual disks) with smartctl's own message.
pub async fn smart(devices: &[String]) -> Value {
    if run_any("smartctl", &["--version"]).await.is_err() {
        return json!({
            "available": false,
            "reason": "smartctl is not installed on this node",
            "verdict": "unavailable: smartctl is not installed on this node",
        });
    }
    let mut out = Vec::new();
    for d in devices {
        let v = match run_any("smartctl", &["-j", "-H", "-A", d]).await {
            Ok((_, stdout)) => parse_smart(d, &stdout),
            Err(e) => json!({ "device": d, "error": e, "verdict": format!("unavailable: {e}") }),
        };
        out.push(v);
    }
    json!({ "available": true, "devices": out })
}

/// The fields of `smartctl -j -H -A` a farmer needs: overall verdict, temperature, power-on
/// hours, reallocated and pending sectors; smartctl's error messages when it has no verdict.
/// Never panics on odd input (it is a child's output).
pub fn parse_smart(device: &str, stdout: &str) -> Value {
    let Ok(j) = serde_json::from_str::<Value>(stdout) else {
        return json!({ "device": device, "error": "smartctl printed no JSON" });
    };
    let attr = |id: u64| {
        j["ata_smart_attributes"]["table"]
            .as_array()
            .and_then(|t| t.iter().find(|a| a["id"].as_u64() == Some(id)))
            .and_then(|a| a["raw"]["value"].as_u64())
    };
    let messages: Vec<String> = j["smartctl"]["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|x| x["string"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let passed = j["smart_status"]["passed"].as_bool();
    let mut v = json!({
        "device": device,
        "model": j["model_name"].as_str(),
        "passed": passed,
        "temperature_c": j["temperature"]["current"].as_u64(),
        "power_on_hours": j["power_on_time"]["hours"].as_u64(),
        "reallocated_sectors": attr(5),
        "pending_sectors": attr(197),
        "exit_status": j["smartctl"]["exit_status"].as_u64(),
    });
    match passed {
        Some(true) => v["verdict"] = json!("passed"),
        Some(false) => v["verdict"] = json!("FAILED"),
        None => {
            let why = if messages.is_empty() {
                "no SMART verdict".to_string()
            } else {
                messages.join("; ")
            };
            v["verdict"] = json!(format!("unavailable: {why}"));
            v["error"] = json!(why);
        }
    }
    v
}

/// The self-check's reasons from a [`smart`] answer: each device whose SMART verdict is
/// failed. Devices without SMART and a missing smartctl are not reasons (nothing to fix).
pub fn smart_failures(v: &Value) -> Vec<String> {
    v["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["passed"] == false)
        .map(|d| {
            format!(
                "SMART says disk {} ({}) is failing",
                d["device"].as_str().unwrap_or("?"),
                d["model"].as_str().unwrap_or("unknown model")
            )
        })
        .collect()
}

/// How long a SMART reading serves the self-check: smartctl can take seconds per disk (the
/// check runs every 15 s) and a disk's verdict changes slowly.
pub const SMART_REFRESH: Duration = Duration::from_secs(600);

/// The last SMART reading the self-check uses, and whether one is running.
#[derive(Default)]
pub struct SmartCache(Mutex<SmartState>);

#[derive(Default)]
struct SmartState {
    at: Option<std::time::Instant>,
    running: bool,
    failures: Vec<String>,
}

impl SmartCache {
    fn state(&self) -> std::sync::MutexGuard<'_, SmartState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a fresh [`smart`] answer (also ends a running refresh).
    pub fn note(&self, v: &Value) {
        let mut c = self.state();
        c.at = Some(std::time::Instant::now());
        c.running = false;
        c.failures = smart_failures(v);
    }

    /// The failures as last read, and whether the caller should start a new reading now
    /// (none running, the last older than [`SMART_REFRESH`], devices to read); `true` marks it
    /// running.
    pub fn failures_and_due(&self, have_devices: bool) -> (Vec<String>, bool) {
        let mut c = self.state();
        let due = have_devices && !c.running && c.at.is_none_or(|t| t.elapsed() >= SMART_REFRESH);
        if due {
            c.running = true;
        }
        (c.failures.clone(), due)
    }
}

/// The node's SMART cache.
pub fn smart_cache() -> &'static SmartCache {
    static C: OnceLock<SmartCache> = OnceLock::new();
    C.get_or_init(SmartCache::default)
}

/// The self-check's SMART reasons as last read, never waiting for smartctl: when the reading
/// is older than [`SMART_REFRESH`] a new one of `devices` starts in the background and a
/// later check sees it. Must run inside a tokio runtime.
pub fn cached_smart_failures(devices: Vec<String>) -> Vec<String> {
    let cache = smart_cache();
    let (failures, due) = cache.failures_and_due(!devices.is_empty());
    if due {
        tokio::spawn(async move {
            let v = smart(&devices).await;
            cache.note(&v);
        });
    }
    failures
}

/// The devices of the btrfs filesystems [`btrfs_stats`] found.
pub fn btrfs_devices(stats: &[Value]) -> Vec<String> {
    // `stats` maps devices to counters, or is `{"error": …}` when btrfs failed.
    let mut out: Vec<String> = stats
        .iter()
        .filter_map(|f| f["stats"].as_object())
        .flat_map(|o| {
            o.iter()
                .filter(|(_, c)| c.is_object())
                .map(|(d, _)| d.clone())
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// `zos.admin.diag.reach`: where to test and how long at most.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReachArg {
    /// An IP address (ping) or IP:port (TCP connect). No names: the test must not depend on
    /// (or probe) the node's resolver.
    pub address: String,
    /// Milliseconds, capped at [`MAX_REACH_TIMEOUT`] (default 3000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Pings for an address without a port (default 3, at most [`MAX_PINGS`]).
    #[serde(default)]
    pub count: Option<u32>,
}

/// Runs the reachability test; `Err` only for an argument that is not an address.
pub async fn reach(a: &ReachArg) -> Result<Value, String> {
    let timeout = Duration::from_millis(a.timeout_ms.unwrap_or(3000)).min(MAX_REACH_TIMEOUT);
    if let Ok(sa) = a.address.parse::<SocketAddr>() {
        let start = std::time::Instant::now();
        let r = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(sa)).await;
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        return Ok(match r {
            Ok(Ok(_)) => {
                json!({"kind": "tcp", "address": sa.to_string(), "reachable": true, "rtt_ms": ms})
            }
            Ok(Err(e)) => {
                json!({"kind": "tcp", "address": sa.to_string(), "reachable": false, "error": e.to_string(), "elapsed_ms": ms})
            }
            Err(_) => {
                json!({"kind": "tcp", "address": sa.to_string(), "reachable": false, "error": format!("timed out after {} ms", timeout.as_millis()), "elapsed_ms": ms})
            }
        });
    }
    let ip: IpAddr = a
        .address
        .parse()
        .map_err(|_| format!("'{}' is neither an IP address nor IP:port", a.address))?;
    let count = a.count.unwrap_or(3).clamp(1, MAX_PINGS).to_string();
    // -W per reply, -w for the whole run: both bounded by the timeout.
    let secs = timeout.as_secs().max(1).to_string();
    let ipstr = ip.to_string();
    let fut = tokio::process::Command::new("ping")
        .args(["-n", "-c", &count, "-W", &secs, "-w", &secs, &ipstr])
        .kill_on_drop(true)
        .output();
    let r = tokio::time::timeout(timeout + Duration::from_secs(1), fut).await;
    Ok(match r {
        Ok(Ok(o)) => {
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            let received = out
                .lines()
                .find(|l| l.contains("received"))
                .and_then(|l| l.split(',').nth(1))
                .and_then(|s| s.split_whitespace().next())
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(0);
            json!({"kind": "ping", "address": ipstr, "reachable": received > 0, "sent": count.parse::<u32>().unwrap_or(0),
                   "received": received, "summary": out.lines().rev().take(2).collect::<Vec<_>>()})
        }
        Ok(Err(e)) => {
            json!({"kind": "ping", "address": ipstr, "reachable": false, "error": format!("ping: {e}")})
        }
        Err(_) => {
            json!({"kind": "ping", "address": ipstr, "reachable": false, "error": "ping timed out"})
        }
    })
}

/// The self-check: `ok` when `reasons` is empty, `degraded` otherwise.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Health {
    /// `ok` or `degraded`.
    pub status: String,
    /// Why degraded, one short sentence each.
    pub reasons: Vec<String>,
}

impl Health {
    /// From the reasons found.
    pub fn from_reasons(reasons: Vec<String>) -> Health {
        Health {
            status: if reasons.is_empty() { "ok" } else { "degraded" }.into(),
            reasons,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(fields: &[(&str, &str)], level: &str) -> LogEvent {
        LogEvent {
            seq: 0,
            ts_ms: 0,
            level: level.into(),
            target: "t".into(),
            message: "m".into(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn ring_is_bounded_and_filters_by_deployment_workload_and_level() {
        let r = LogRing::default();
        for i in 0..RING_CAPACITY + 10 {
            r.push(ev(&[("contract", &(i % 3).to_string())], "INFO"));
        }
        r.push(ev(
            &[("contract", "7"), ("twin", "3"), ("name", "vm")],
            "WARN",
        ));
        let all = r.query(&LogQuery {
            limit: Some(usize::MAX),
            ..Default::default()
        });
        assert_eq!(all.len(), MAX_LOG_LINES);
        assert_eq!(all.last().unwrap().seq, RING_CAPACITY as u64 + 11);
        let q = |q: LogQuery| r.query(&q);
        let seven = q(LogQuery {
            contract_id: Some(7),
            ..Default::default()
        });
        assert_eq!(seven.len(), 1);
        assert_eq!(
            q(LogQuery {
                workload: Some("vm".into()),
                twin_id: Some(3),
                ..Default::default()
            })
            .len(),
            1
        );
        assert!(
            q(LogQuery {
                workload: Some("vm".into()),
                twin_id: Some(4),
                ..Default::default()
            })
            .is_empty()
        );
        assert_eq!(
            q(LogQuery {
                level: Some("warn".into()),
                ..Default::default()
            })
            .len(),
            1
        );
        assert!(
            q(LogQuery {
                after: Some(seven[0].seq),
                ..Default::default()
            })
            .is_empty()
        );
        // the oldest were dropped
        let g = r.inner.lock().unwrap();
        assert_eq!(g.1.len(), RING_CAPACITY);
        assert_eq!(g.1.front().unwrap().seq, 12);
    }

    #[tokio::test]
    async fn kernel_lines_are_bounded() {
        let v = kernel(&KernelArg {
            lines: Some(3),
            warnings: false,
        })
        .await;
        if let Some(e) = v["error"].as_str() {
            eprintln!("SKIP kernel_lines_are_bounded: dmesg unavailable here: {e}");
            return;
        }
        assert!(v["lines"].as_array().unwrap().len() <= 3, "{v}");
        let v = kernel(&KernelArg {
            lines: Some(usize::MAX),
            warnings: true,
        })
        .await;
        assert!(v["lines"].as_array().unwrap().len() <= MAX_KERNEL_LINES);
    }

    #[test]
    fn scrub_status_is_read() {
        let done = "UUID:             5e8c\nScrub started:    Sun Dec  6 15:00:00 2026\nStatus:           finished\nDuration:         0:00:01\nError summary:    no errors found\n";
        let m = parse_scrub_status(done);
        assert_eq!(m["status"], "finished");
        assert_eq!(m["error_summary"], "no errors found");
        assert_eq!(m["scrub_started"], "Sun Dec  6 15:00:00 2026");
        let none = parse_scrub_status("UUID:             5e8c\n\tno stats available\n");
        assert_eq!(none["note"], "no stats available");
        assert!(parse_scrub_status("").is_empty());
        let _ = parse_scrub_status(":\n::\n\u{0}x:y\n");
    }

    #[test]
    fn smart_output_is_read_and_junk_is_an_error() {
        let ok = r#"{"smartctl":{"exit_status":0},"model_name":"Disk X",
            "smart_status":{"passed":true},"temperature":{"current":34},
            "power_on_time":{"hours":1200},
            "ata_smart_attributes":{"table":[{"id":5,"raw":{"value":8}},{"id":197,"raw":{"value":0}}]}}"#;
        let v = parse_smart("/dev/sda", ok);
        assert_eq!(v["passed"], true);
        assert_eq!(v["temperature_c"], 34);
        assert_eq!(v["power_on_hours"], 1200);
        assert_eq!(v["reallocated_sectors"], 8);
        assert_eq!(v["pending_sectors"], 0);
        assert!(v.get("error").is_none());
        let failing = r#"{"smartctl":{"exit_status":8},"smart_status":{"passed":false}}"#;
        assert_eq!(parse_smart("/dev/sdb", failing)["passed"], false);
        let loopdev = r#"{"smartctl":{"exit_status":1,"messages":[{"string":"/dev/loop0: Unable to detect device type","severity":"error"}]}}"#;
        let v = parse_smart("/dev/loop0", loopdev);
        assert_eq!(v["passed"], Value::Null);
        assert_eq!(v["error"], "/dev/loop0: Unable to detect device type");
        for junk in ["", "{", "[]", "null", "{\"smart_status\":7}"] {
            let v = parse_smart("/dev/x", junk);
            assert!(v["error"].is_string(), "{junk}: {v}");
        }
        let stats = vec![
            json!({"stats": {"/dev/loop1": {}, "/dev/loop0": {}}}),
            json!({"stats": {"error": "x"}}),
            json!({"stats": {"/dev/loop0": {}}}),
        ];
        assert_eq!(btrfs_devices(&stats), ["/dev/loop0", "/dev/loop1"]);
    }

    /// smartctl 7.3's answers: on a loop device (captured on this host) and on a failing ATA
    /// disk (in smartctl's JSON schema, trimmed).
    #[test]
    fn smart_fixtures_give_verdicts_and_failures() {
        let lo = parse_smart("/dev/loop0", include_str!("../testdata/smartctl-loop.json"));
        assert_eq!(
            lo["verdict"],
            "unavailable: /dev/loop0: Unable to detect device type"
        );
        assert_eq!(lo["exit_status"], 1);
        let bad = parse_smart(
            "/dev/sda",
            include_str!("../testdata/smartctl-failing.json"),
        );
        assert_eq!(bad["verdict"], "FAILED");
        assert_eq!(bad["model"], "ST2000DM001-1CH164");
        assert_eq!(bad["reallocated_sectors"], 2848);
        assert_eq!(bad["pending_sectors"], 56);
        assert_eq!(bad["temperature_c"], 41);
        assert_eq!(bad["exit_status"], 24);
        let answer = json!({"available": true, "devices": [lo, bad,
            {"device": "/dev/sdb", "passed": true, "verdict": "passed"}]});
        assert_eq!(
            smart_failures(&answer),
            ["SMART says disk /dev/sda (ST2000DM001-1CH164) is failing"]
        );
        for odd in [
            json!(null),
            json!({"devices": 3}),
            json!({"devices": [7, {"passed": "no"}]}),
        ] {
            assert!(smart_failures(&odd).is_empty(), "{odd}");
        }
        // The self-check's cache: a first reading is due, not a second while it runs; a
        // recorded answer serves until it is old.
        let cache = SmartCache::default();
        assert_eq!(cache.failures_and_due(true), (vec![], true));
        assert_eq!(cache.failures_and_due(true), (vec![], false));
        cache.note(&answer);
        assert_eq!(
            cache.failures_and_due(true),
            (smart_failures(&answer), false)
        );
        assert!(
            !SmartCache::default().failures_and_due(false).1,
            "no devices: no reading"
        );
    }

    /// `btrfs scrub status -R` as btrfs-progs prints it (captured on a loop filesystem: before
    /// any scrub and after one), and an error count.
    #[test]
    fn raw_scrub_status_counts_errors() {
        let none = "UUID:             ee11cef0-c6f8-45c1-a406-f47b2541eac0\n\tno stats available\n\tdata_extents_scrubbed: 0\n\tread_errors: 0\n\tcsum_errors: 0\n\tuncorrectable_errors: 0\n\tlast_physical: 0\n";
        let v = scrub_json(&parse_scrub_status(none));
        assert_eq!(v["note"], "no stats available");
        assert_eq!(v["errors"], 0);
        let done = "UUID:             ee11cef0-c6f8-45c1-a406-f47b2541eac0\nScrub started:    Sun Dec  6 15:51:13 2026\nStatus:           finished\nDuration:         0:00:00\n\tdata_extents_scrubbed: 128\n\tdata_bytes_scrubbed: 8388608\n\tread_errors: 0\n\tcsum_errors: 3\n\tverify_errors: 0\n\tsuper_errors: 0\n\tmalloc_errors: 0\n\tuncorrectable_errors: 1\n\tunverified_errors: 0\n\tcorrected_errors: 2\n\tlast_physical: 72613888\n";
        let v = scrub_json(&parse_scrub_status(done));
        assert_eq!(v["status"], "finished");
        assert_eq!(v["data_bytes_scrubbed"], "8388608");
        assert_eq!(v["uncorrectable_errors"], "1");
        assert_eq!(v["errors"], 6);
        let odd = "x_errors: 18446744073709551615\ny_errors: 5\nz_errors: -1\n";
        assert_eq!(scrub_json(&parse_scrub_status(odd))["errors"], u64::MAX);
    }

    #[test]
    fn device_stats_parse_and_junk_is_skipped() {
        let out = "[/dev/loop3].write_io_errs    0\n[/dev/loop3].corruption_errs 2\n\
                   garbage\n[/dev/loop4].read_io_errs x\n[nodot 1\n";
        let m = parse_device_stats(out);
        assert_eq!(m.len(), 1);
        assert_eq!(m["/dev/loop3"]["corruption_errs"], 2);
        assert_eq!(m["/dev/loop3"].len(), 2);
    }

    #[tokio::test]
    async fn reach_is_bounded_and_takes_addresses_only() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = l.local_addr().unwrap().to_string();
        let r = reach(&ReachArg {
            address: open,
            timeout_ms: Some(1000),
            count: None,
        })
        .await
        .unwrap();
        assert_eq!(r["reachable"], json!(true), "{r}");
        drop(l);
        // a closed port on loopback is refused at once
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let r = reach(&ReachArg {
            address: closed,
            timeout_ms: Some(1000),
            count: None,
        })
        .await
        .unwrap();
        assert_eq!(r["reachable"], json!(false), "{r}");
        assert!(
            reach(&ReachArg {
                address: "example.com:80".into(),
                timeout_ms: None,
                count: None
            })
            .await
            .is_err()
        );
    }
}
