//! Watching the wire: `tcpdump` on the fabric bridge, inside the fabric
//! namespace, so a test can show what crosses between nodes.

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
    /// Starts tcpdump on `cluster`'s bridge and waits until it captures.
    pub fn start(cluster: &Cluster, pcap: PathBuf) -> Result<Self, MeshError> {
        let bridge = format!("{}b", cluster.interface_tag());
        let mut cmd = Command::new("tcpdump");
        // -U: write each packet as it arrives; -s 0: whole frames.
        cmd.args(["-i", &bridge, "-n", "-U", "-s", "0", "-w"])
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
        // Frames still in flight reach the bridge within microseconds; a
        // short pause keeps the capture from ending before them.
        std::thread::sleep(Duration::from_millis(200));
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
