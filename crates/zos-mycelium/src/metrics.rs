//! Prometheus text for `/metrics` (upstream's `--metrics-api-address` exporter; the names
//! are zos's): per-peer health (state, link cost, IHU age, bytes), per-route health (metric,
//! seqno, time to expiry) and the data path's counters.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::node::Node;

/// Prometheus label values escape `\`, `"` and newlines.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition text for a node.
pub fn render(n: &Node) -> String {
    let inner = n.inner();
    let mut o = String::new();
    let help = |o: &mut String, name: &str, kind: &str, text: &str| {
        let _ = writeln!(o, "# HELP {name} {text}\n# TYPE {name} {kind}");
    };

    help(
        &mut o,
        "mycelium_peer_up",
        "gauge",
        "1 if the peer's link is up (configured and discovered peers are listed while down)",
    );
    for p in inner.peer_stats() {
        let ep = format!(
            "{}://{}",
            p["endpoint"]["proto"].as_str().unwrap_or(""),
            p["endpoint"]["addr"]["socket"].as_str().unwrap_or("")
        );
        let kind = p["type"].as_str().unwrap_or("");
        let up = p["connectionState"] == "alive";
        let _ = writeln!(
            o,
            "mycelium_peer_up{{endpoint=\"{}\",type=\"{kind}\"}} {}",
            esc(&ep),
            u8::from(up)
        );
    }
    let links = inner.link_health();
    help(
        &mut o,
        "mycelium_peer_link_cost",
        "gauge",
        "the link's cost: smoothed Hello/IHU round trip in ms + transport cost",
    );
    for l in &links {
        let _ = writeln!(
            o,
            "mycelium_peer_link_cost{{endpoint=\"{}\"}} {}",
            esc(&l.endpoint),
            l.link_cost
        );
    }
    help(
        &mut o,
        "mycelium_peer_ihu_age_seconds",
        "gauge",
        "seconds since the peer's last IHU (the link is dead past the dead-peer timeout)",
    );
    for l in &links {
        let _ = writeln!(
            o,
            "mycelium_peer_ihu_age_seconds{{endpoint=\"{}\"}} {:.3}",
            esc(&l.endpoint),
            l.ihu_age.as_secs_f64()
        );
    }
    for (name, text, pick) in [
        (
            "mycelium_peer_rx_bytes_total",
            "bytes received on the link",
            0,
        ),
        ("mycelium_peer_tx_bytes_total", "bytes sent on the link", 1),
    ] {
        help(&mut o, name, "counter", text);
        for l in &links {
            let v = if pick == 0 { l.rx_bytes } else { l.tx_bytes };
            let _ = writeln!(o, "{name}{{endpoint=\"{}\"}} {v}", esc(&l.endpoint));
        }
    }

    let now = Instant::now();
    let (selected, fallback) = {
        let r = inner.router();
        (r.selected_routes(), r.fallback_routes())
    };
    help(
        &mut o,
        "mycelium_route_metric",
        "gauge",
        "a route's metric (65535 = retracted), selected=\"true\" for the one in use",
    );
    for (sel, routes) in [("true", &selected), ("false", &fallback)] {
        for r in routes.iter() {
            let _ = writeln!(
                o,
                "mycelium_route_metric{{subnet=\"{}\",next_hop=\"{}\",selected=\"{sel}\"}} {}",
                r.subnet,
                esc(&inner.link_name(r.next_hop)),
                r.metric.0
            );
        }
    }
    help(
        &mut o,
        "mycelium_route_seqno",
        "gauge",
        "the selected route's sequence number",
    );
    for r in &selected {
        let _ = writeln!(
            o,
            "mycelium_route_seqno{{subnet=\"{}\"}} {}",
            r.subnet, r.seqno.0
        );
    }
    help(
        &mut o,
        "mycelium_route_expires_seconds",
        "gauge",
        "seconds until the selected route expires unless refreshed",
    );
    for r in &selected {
        let _ = writeln!(
            o,
            "mycelium_route_expires_seconds{{subnet=\"{}\"}} {:.3}",
            r.subnet,
            r.expires.saturating_duration_since(now).as_secs_f64()
        );
    }
    help(
        &mut o,
        "mycelium_queried_subnets",
        "gauge",
        "subnets with an outstanding route request",
    );
    let _ = writeln!(
        o,
        "mycelium_queried_subnets {}",
        inner.router().queried_subnets().len()
    );

    let c = &inner.counters;
    help(
        &mut o,
        "mycelium_packets_total",
        "counter",
        "data packets by what happened to them",
    );
    for (what, v) in [
        ("sent", &c.tun_rx),
        ("received", &c.tun_tx),
        ("forwarded", &c.forwarded),
        ("dropped_no_route", &c.no_route),
        ("dropped_undecryptable", &c.undecryptable),
        ("dropped_replayed", &c.replayed),
        ("dropped_queue_full", &c.queue_full),
        ("dropped_hop_limit", &c.hop_limit),
        ("quic_datagram", &c.quic_datagrams),
        ("quic_stream", &c.quic_stream_data),
    ] {
        let _ = writeln!(
            o,
            "mycelium_packets_total{{what=\"{what}\"}} {}",
            v.load(Ordering::Relaxed)
        );
    }
    o
}
