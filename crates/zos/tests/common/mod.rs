//! Scaffolding shared by the black-box tests of the `zos` binary.
#![allow(dead_code)] // each test binary uses a different part

pub mod cli;

use std::path::PathBuf;
use std::process::Child;

/// A child process, SIGKILLed and reaped on drop (also when the test fails).
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A temporary directory, removed on drop (also when the test fails).
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh, unique, existing directory under the system temp dir.
    pub fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos();
        let p = std::env::temp_dir().join(format!("zos-test-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
