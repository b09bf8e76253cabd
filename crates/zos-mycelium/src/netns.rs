//! A node inside a network namespace (how Zero-OS runs its instances: the host instance in the
//! node's namespace, one instance per network resource in the resource's): the TUN and every
//! socket belong to the namespace of the thread that opens them, so the node gets its own
//! thread, which enters the namespace, and a runtime whose worker threads are spawned from
//! there (threads inherit their creator's namespace).

use std::net::SocketAddr;
use std::sync::mpsc as std_mpsc;

use crate::node::{Config, Endpoint, Node, NodeError};

/// A node running on its own runtime, in a namespace; stopped on drop.
pub struct NsNode {
    node: Node,
    rt: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for NsNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NsNode").finish_non_exhaustive()
    }
}

fn failed(what: &str, e: impl std::fmt::Display) -> NodeError {
    NodeError::Tun {
        name: what.to_string(),
        message: e.to_string(),
    }
}

impl NsNode {
    /// Starts `cfg` inside namespace `netns` (`/run/netns/<name>`; `None`: the caller's), with
    /// the HTTP API on `api` if given (an address in that namespace).
    pub fn start(
        cfg: Config,
        netns: Option<&str>,
        api: Option<SocketAddr>,
    ) -> Result<NsNode, NodeError> {
        let path = netns.map(|n| format!("/run/netns/{n}"));
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("mycelium".into())
            .spawn(move || {
                let entered = match &path {
                    Some(p) => std::fs::File::open(p)
                        .map_err(|e| failed(p, e))
                        .and_then(|f| {
                            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                                .map_err(|e| failed(p, e))
                        }),
                    None => Ok(()),
                };
                if let Err(e) = entered {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("mycelium-worker")
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(failed("runtime", e)));
                        return;
                    }
                };
                let handle = rt.handle().clone();
                rt.block_on(async move {
                    let node = match Node::start(cfg).await {
                        Ok(n) => n,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok((node.clone(), handle)));
                    let api = async {
                        match api {
                            Some(a) => {
                                if let Err(e) = crate::api::serve(node.clone(), a).await {
                                    tracing::warn!(addr = %a, "mycelium API: {e}");
                                }
                                std::future::pending::<()>().await;
                            }
                            None => std::future::pending::<()>().await,
                        }
                    };
                    tokio::select! {
                        _ = stop_rx => {}
                        () = api => {}
                    }
                    node.shutdown();
                });
            })
            .map_err(|e| failed("thread", e))?;
        match ready_rx.recv() {
            Ok(Ok((node, rt))) => Ok(NsNode {
                node,
                rt,
                stop: Some(stop_tx),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(failed("thread", "the node thread ended before starting"))
            }
        }
    }

    /// The node (views, counters).
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Adds a static peer; dialed from the node's namespace.
    pub fn add_peer(&self, ep: Endpoint) -> bool {
        let _in_runtime = self.rt.enter();
        self.node.add_static_peer(ep)
    }

    /// Stops the node and waits for its thread.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for NsNode {
    fn drop(&mut self) {
        self.halt();
    }
}
