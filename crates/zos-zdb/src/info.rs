//! Text bodies of `INFO` and `NSINFO` (field names as upstream where clients parse them).

use std::sync::atomic::Ordering;

use crate::namespace::Namespace;
use crate::session::Shared;

/// `NSINFO` text; the admin also sees the password and paths.
pub fn namespace_info(ns: &Namespace, admin: bool) -> String {
    let st = ns.lock();
    let yn = |b: bool| if b { "yes" } else { "no" };
    let (data_disk, index_disk) = st.store.disk_sizes();
    let mut s = String::from("# namespace\n");
    s += &format!("name: {}\n", ns.name);
    s += &format!("entries: {}\n", st.entries());
    s += &format!("public: {}\n", yn(st.desc.public));
    s += &format!("worm: {}\n", yn(st.desc.worm));
    s += &format!("locked: {}\n", yn(st.desc.lock));
    s += &format!("frozen: {}\n", yn(st.desc.freeze));
    s += &format!("password: {}\n", yn(st.desc.password.is_some()));
    s += &format!("encrypted: {}\n", yn(st.desc.encryption.is_some()));
    s += &format!("sealed: {}\n", yn(st.is_sealed()));
    s += &format!("data_size_bytes: {}\n", st.live_bytes());
    s += &format!(
        "data_size_mb: {:.2}\n",
        st.live_bytes() as f64 / (1024.0 * 1024.0)
    );
    s += &format!("data_disk_bytes: {data_disk}\n");
    s += &format!("data_limits_bytes: {}\n", st.desc.maxsize);
    s += &format!("index_size_bytes: {index_disk}\n");
    s += &format!("index_size_kb: {:.2}\n", index_disk as f64 / 1024.0);
    s += &format!("next_internal_id: {}\n", st.next_id());
    s += &format!("mode: {}\n", st.desc.mode.info_name());
    if admin {
        if let Some(p) = &st.desc.password {
            s += &format!("password_raw: {p}\n");
        }
        let (id, off) = st.store.data_position();
        s += &format!("data_path: {}\n", ns.data_dir.display());
        s += &format!("index_path: {}\n", ns.index_dir.display());
        s += &format!("data_current_id: {id}\ndata_current_offset: {off}\n");
    }
    s
}

/// `INFO` text.
pub fn server_info(sh: &Shared) -> String {
    let mut s = String::from("# server\nserver_name: 0-db (zdb)\n");
    s += &format!("server_revision: zos-zdb {}\n", env!("CARGO_PKG_VERSION"));
    s += &format!("instance_id: {}\n", sh.instance_id);
    s += &format!("uptime: {}\n", sh.started.elapsed().as_secs());
    s += &format!(
        "mode: {}\n",
        sh.engine.config().mode.map_or("mixed", |m| m.info_name())
    );
    s += &format!(
        "sync: {}\n",
        if sh.engine.config().sync { "yes" } else { "no" }
    );
    s += "\n# clients\n";
    s += &format!(
        "clients_connected: {}\n",
        sh.clients.load(Ordering::Relaxed)
    );
    s += "\n# stats\n";
    s += &format!(
        "commands_executed: {}\n",
        sh.commands.load(Ordering::Relaxed)
    );
    s += &format!("network_rx_bytes: {}\n", sh.net_in.load(Ordering::Relaxed));
    s += &format!("network_tx_bytes: {}\n", sh.net_out.load(Ordering::Relaxed));
    s += &format!("namespaces: {}\n", sh.engine.list().len());
    let l = &sh.limits;
    let st = &sh.stats;
    let secs = |d: Option<std::time::Duration>| d.map_or(0, |d| d.as_secs());
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    s += "\n# limits\n";
    s += &format!("maxclients: {}\n", l.max_clients);
    s += &format!("idle_timeout_secs: {}\n", secs(l.idle_timeout));
    s += &format!("request_timeout_secs: {}\n", secs(l.request_timeout));
    s += &format!("pending_budget_bytes: {}\n", l.max_pending_bytes);
    s += &format!(
        "pending_bytes: {}\n",
        st.pending_bytes.load(Ordering::Relaxed)
    );
    s += &format!("rejected_connections_maxclients: {}\n", n(&st.refused_full));
    s += &format!("rejected_connections_banned: {}\n", n(&st.refused_banned));
    s += &format!("timeouts_idle: {}\n", n(&st.idle_timeouts));
    s += &format!("timeouts_request: {}\n", n(&st.request_timeouts));
    s += &format!("pending_refused: {}\n", n(&st.pending_refused));
    s += &format!("auth_failures: {}\n", n(&st.auth_failures));
    s += &format!("auth_delayed: {}\n", n(&st.auth_delayed));
    s += &format!("auth_disconnects: {}\n", n(&st.auth_closed));
    s += &format!("auth_bans: {}\n", n(&st.auth_bans));
    s += &format!("auth_banned_sources: {}\n", sh.throttle.banned_now());
    s += &format!("synctime_secs: {}\n", sh.synctime);
    s += &format!("periodic_fsyncs: {}\n", n(&st.periodic_syncs));
    let c = sh.engine.cache_stats();
    s += "\n# cache\n";
    s += &format!("cache_capacity_bytes: {}\n", c.capacity);
    s += &format!("cache_used_bytes: {}\n", c.used);
    s += &format!("cache_entries: {}\n", c.entries);
    s += &format!("cache_hits: {}\n", c.hits);
    s += &format!("cache_misses: {}\n", c.misses);
    s
}
