//! Watching the wire: `tcpdump` on the fabric bridge's ports, inside the
//! fabric namespace, so a test can show what crosses between nodes.
//!
//! The capture listens on every interface of the fabric namespace (`-i
//! any`): frames the bridge forwards from one port to another never pass the
//! bridge device itself, only its ports. Each frame is seen twice, entering
//! on one port and leaving on another.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cluster::Cluster;
use crate::netns::Process;

use super::MeshError;

/// A running capture of every frame on the fabric bridge.
#[derive(Debug)]
pub struct FabricCapture {
    process: Process,
    pcap: PathBuf,
}

/// What a stopped capture recorded.
#[derive(Debug)]
pub struct Recording {
    pub pcap: PathBuf,
    /// The pcap file's bytes: headers and every frame, payloads included.
    pub bytes: Vec<u8>,
}

impl FabricCapture {
    /// Starts tcpdump on `cluster`'s bridge ports and waits until it captures.
    pub fn start(cluster: &Cluster, pcap: PathBuf) -> Result<Self, MeshError> {
        let mut cmd = Command::new("tcpdump");
        // --immediate-mode: take each frame from the kernel as it arrives
        // (not when a buffer block fills or times out); -U: write it out at
        // once; -s 0: whole frames; -B: a kernel buffer (KiB) for bursts.
        cmd.args([
            "-i",
            "any",
            "-n",
            "--immediate-mode",
            "-U",
            "-s",
            "0",
            "-B",
            "32768",
            "-w",
        ])
        .arg(&pcap)
        .arg("tcp");
        let mut process = cluster.fabric().spawn(&cmd)?;
        let start = Instant::now();
        while !process.log().contains("listening on") {
            if let Ok(Some(status)) = process.try_wait() {
                return Err(MeshError::Exited {
                    label: process.label().to_owned(),
                    status,
                    log: process.log(),
                });
            }
            if start.elapsed() > Duration::from_secs(10) {
                return Err(MeshError::Timeout {
                    what: "tcpdump not listening".to_owned(),
                    label: process.label().to_owned(),
                    waited: start.elapsed(),
                    log: process.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { process, pcap })
    }

    /// Stops tcpdump (letting it flush) and reads what it wrote.
    pub fn stop(self) -> Result<Recording, MeshError> {
        // tcpdump may lag behind a burst of traffic: frames already taken
        // from the kernel but not yet written would be lost with it. Stop
        // once the file has stopped growing.
        let size = || std::fs::metadata(&self.pcap).map_or(0, |m| m.len());
        let (start, mut last, mut still) = (Instant::now(), size(), 0);
        while still < 4 && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(100));
            let now = size();
            still = if now == last { still + 1 } else { 0 };
            last = now;
        }
        let _ = self.process.stop(Duration::from_secs(5));
        let bytes = std::fs::read(&self.pcap).map_err(|e| MeshError::io(self.pcap.clone(), e))?;
        Ok(Recording {
            pcap: self.pcap,
            bytes,
        })
    }
}

impl Recording {
    /// Whether `needle` occurs anywhere in the capture.
    pub fn contains(&self, needle: &[u8]) -> bool {
        !needle.is_empty() && self.bytes.windows(needle.len()).any(|w| w == needle)
    }

    /// Frames matching the tcpdump `filter` (e.g. `tcp dst port 15008`).
    pub fn count(&self, filter: &str) -> Result<usize, MeshError> {
        let out = Command::new("tcpdump")
            .args(["-n", "-r"])
            .arg(&self.pcap)
            .args(filter.split_whitespace())
            .output()
            .map_err(|e| MeshError::io(self.pcap.clone(), e))?;
        Ok(String::from_utf8_lossy(&out.stdout).lines().count())
    }

    /// tcpdump's one-line summaries of the frames matching `filter`.
    pub fn summary(&self, filter: &str) -> Result<String, MeshError> {
        let out = Command::new("tcpdump")
            .args(["-n", "-r"])
            .arg(&self.pcap)
            .args(filter.split_whitespace())
            .output()
            .map_err(|e| MeshError::io(self.pcap.clone(), e))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.pcap);
        }
    }
}
