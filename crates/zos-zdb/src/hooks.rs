//! `--hook <exe>`: an executable the server runs on upstream's events (`ready`, `close`,
//! `namespaces-init`, `namespace-created/updated/deleted/reloaded/closing`, `jump-index`,
//! `jump-data`), as `<exe> <event> <instance-id> [args…]`.
//!
//! Hooks run one at a time, in the order of their events, on a thread of their own: a slow
//! hook never holds a namespace lock or a connection, and a script that records its calls
//! sees them in order. `ready` and `close` are waited for (a failing `ready` aborts the
//! start, as upstream); the others are queued. `HOOKS` lists the recent runs.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

/// Runs kept for `HOOKS`.
const KEEP_RUNS: usize = 128;

/// One hook run, as `HOOKS` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookRun {
    /// The event (first argument).
    pub event: String,
    /// The arguments after the instance id.
    pub args: Vec<String>,
    /// Process id (0: it could not be started).
    pub pid: u32,
    /// Start, unix seconds.
    pub created: u64,
    /// End, unix seconds (0: still running).
    pub finished: u64,
    /// Exit status (-1: killed by a signal or not started; `None`: running).
    pub status: Option<i32>,
}

struct Job {
    event: String,
    args: Vec<String>,
    done: Option<SyncSender<Result<(), String>>>,
}

/// The hook runner of one server.
pub struct Hooks {
    exe: PathBuf,
    instance: String,
    tx: Mutex<Option<Sender<Job>>>,
    runs: Arc<Mutex<VecDeque<HookRun>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("exe", &self.exe)
            .field("instance", &self.instance)
            .finish()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Hooks {
    /// A runner of `exe`; `instance` is the second argument of every call (the server's
    /// address, as upstream's instance id).
    pub fn new(exe: PathBuf, instance: String) -> Arc<Hooks> {
        let (tx, rx) = channel::<Job>();
        let runs = Arc::new(Mutex::new(VecDeque::new()));
        let hooks = Arc::new(Hooks {
            exe: exe.clone(),
            instance: instance.clone(),
            tx: Mutex::new(Some(tx)),
            runs: runs.clone(),
            worker: Mutex::new(None),
        });
        let worker = std::thread::Builder::new()
            .name("zdb-hooks".into())
            .spawn(move || work(&exe, &instance, rx, &runs));
        match worker {
            Ok(h) => *lock(&hooks.worker) = Some(h),
            Err(e) => tracing::error!(error = %e, "cannot start the hook thread, hooks are off"),
        }
        hooks
    }

    fn send(&self, job: Job) -> bool {
        lock(&self.tx)
            .as_ref()
            .is_some_and(|tx| tx.send(job).is_ok())
    }

    /// Queues `event` (runs after every event queued before it).
    pub fn fire(&self, event: &str, args: Vec<String>) {
        if !self.send(Job {
            event: event.into(),
            args,
            done: None,
        }) {
            tracing::warn!(event, "hook runner stopped, event dropped");
        }
    }

    /// Queues `event` and waits until it ran; `Err` if it could not start or did not exit 0.
    pub fn run_wait(&self, event: &str, args: Vec<String>) -> Result<(), String> {
        let (done, rx) = sync_channel(1);
        if !self.send(Job {
            event: event.into(),
            args,
            done: Some(done),
        }) {
            return Err("hook runner stopped".into());
        }
        rx.recv()
            .unwrap_or_else(|_| Err("hook runner stopped".into()))
    }

    /// Recent runs, oldest first.
    pub fn runs(&self) -> Vec<HookRun> {
        lock(&self.runs).iter().cloned().collect()
    }

    /// Runs what is queued, then stops the runner.
    pub fn shutdown(&self) {
        drop(lock(&self.tx).take());
        if let Some(h) = lock(&self.worker).take() {
            let _ = h.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn work(exe: &PathBuf, instance: &str, rx: Receiver<Job>, runs: &Mutex<VecDeque<HookRun>>) {
    for job in rx {
        let mut run = HookRun {
            event: job.event.clone(),
            args: job.args.clone(),
            pid: 0,
            created: unix_now(),
            finished: 0,
            status: None,
        };
        let child = std::process::Command::new(exe)
            .arg(&job.event)
            .arg(instance)
            .args(&job.args)
            .stdin(std::process::Stdio::null())
            .spawn();
        let result = match child {
            Err(e) => {
                run.status = Some(-1);
                run.finished = unix_now();
                push(runs, run);
                Err(format!("cannot run hook {}: {e}", exe.display()))
            }
            Ok(mut child) => {
                run.pid = child.id();
                let slot = push(runs, run.clone());
                let status = child.wait();
                let code = status.as_ref().ok().and_then(|s| s.code()).unwrap_or(-1);
                let mut all = lock(runs);
                // The run may have been pushed out by newer ones meanwhile.
                if let Some(r) = all.iter_mut().rev().take(KEEP_RUNS).find(|r| {
                    r.pid == slot.pid && r.created == slot.created && r.event == slot.event
                }) {
                    r.finished = unix_now();
                    r.status = Some(code);
                }
                drop(all);
                if code == 0 {
                    Ok(())
                } else {
                    Err(format!(
                        "hook {} {} exited with {code}",
                        exe.display(),
                        job.event
                    ))
                }
            }
        };
        if let Err(e) = &result {
            tracing::warn!(event = %job.event, error = %e, "hook failed");
        } else {
            tracing::debug!(event = %job.event, "hook ran");
        }
        if let Some(done) = job.done {
            let _ = done.send(result);
        }
    }
}

fn push(runs: &Mutex<VecDeque<HookRun>>, run: HookRun) -> HookRun {
    let mut all = lock(runs);
    if all.len() >= KEEP_RUNS {
        all.pop_front();
    }
    all.push_back(run.clone());
    run
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_in_order_and_reports_status() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let script = dir.path().join("hook.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$@\" >> {}\n[ \"$1\" = bad ] && exit 3\nexit 0\n",
                log.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let h = Hooks::new(script, "127.0.0.1:1".into());
        h.fire("one", vec!["a".into()]);
        h.fire("two", vec![]);
        assert_eq!(h.run_wait("three", vec!["b".into(), "c".into()]), Ok(()));
        assert!(
            h.run_wait("bad", vec![])
                .unwrap_err()
                .contains("exited with 3")
        );
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            text,
            "one 127.0.0.1:1 a\ntwo 127.0.0.1:1\nthree 127.0.0.1:1 b c\nbad 127.0.0.1:1\n"
        );
        let runs = h.runs();
        assert_eq!(runs.len(), 4);
        assert_eq!(runs[3].status, Some(3));
        assert!(runs.iter().all(|r| r.pid > 0 && r.finished >= r.created));
        h.shutdown();
        let missing = Hooks::new(dir.path().join("nope"), "x".into());
        assert!(missing.run_wait("ready", vec![]).is_err());
    }
}
