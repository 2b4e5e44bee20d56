//! Exactly-once consume-transform-produce against a real Apache Kafka
//! broker, with the processor killed by SIGKILL mid-stream.

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kafka_tower_testkit::*;

fn example_binary(name: &str) -> std::path::PathBuf {
    let features = enabled_features!("runtime", "ssl", "ssl-vendored", "gssapi", "zstd", "oidc");
    build_example("kafka-tower", name, features)
}

struct Processor {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Processor {
    fn start(
        bin: &std::path::Path,
        input: &str,
        output: &str,
        group: &str,
        txn_id: &str,
        stall_after: Option<usize>,
    ) -> Processor {
        let mut command = Command::new(bin);
        if let Some(n) = stall_after {
            command.env("STALL_AFTER", n.to_string());
        }
        let mut child = command
            .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap())
            .env("INPUT", input)
            .env("OUTPUT", output)
            .env("GROUP", group)
            .env("TRANSACTIONAL_ID", txn_id)
            .env("MAX_BATCH", "50")
            .env("SESSION_TIMEOUT_MS", "6000")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start processor");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Processor { child, lines }
    }

    /// Waits for `n` more served lines.
    fn wait_served(&self, n: usize) -> usize {
        let deadline = Instant::now() + WAIT;
        let mut got = 0;
        while got < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "the processor served only {got} of {n} records"
            );
            self.lines.recv_timeout(left).expect("processor output");
            got += 1;
        }
        got
    }

    /// Sends `sig`, waits for the exit, and returns the exit status with
    /// the number of served lines not yet received: everything the process
    /// printed before it died, read to the end of its stdout.
    fn kill(mut self, sig: i32) -> (std::process::ExitStatus, usize) {
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
        let status = self.child.wait().unwrap();
        // The reader thread ends (and drops its sender) at end of file.
        let rest = self.lines.iter().count();
        (status, rest)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_three_times_the_processor_still_emits_exactly_one_output_per_input() {
    let input = unique("eos-in");
    let output = unique("eos-out");
    let group = unique("eos");
    let txn_id = unique("eos-tx");
    create_topic_with_dlq(&input, 4).await;
    create_topic(&output, 4).await;
    let n = 2000;
    produce(
        &input,
        (0..n).map(|i| Rec::payload(i.to_string()).key(format!("k{i}"))),
    )
    .await;
    let bin = example_binary("exactly_once");

    // Each killed run stops answering at its 230th call, so the kill lands
    // while that record's transaction is open: it must be served again.
    let mut served_lines = 0;
    for _ in 0..3 {
        let p = Processor::start(&bin, &input, &output, &group, &txn_id, Some(230));
        served_lines += p.wait_served(230);
        let (status, rest) = p.kill(libc::SIGKILL);
        served_lines += rest;
        assert!(!status.success(), "killed, not exited");
    }
    let last = Processor::start(&bin, &input, &output, &group, &txn_id, None);
    // Done when the group's committed offsets cover every input record.
    let deadline = Instant::now() + WAIT;
    loop {
        while last.lines.try_recv().is_ok() {
            served_lines += 1;
        }
        let committed: i64 = committed(&group, &input, 4)
            .iter()
            .map(|o| (*o).max(0))
            .sum();
        if committed == n as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {committed} of {n} inputs committed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, rest) = last.kill(libc::SIGTERM);
    served_lines += rest;
    assert!(status.success(), "graceful shutdown exits 0: {status}");

    let outputs = read_all(&output, "read_committed").await;
    let texts: Vec<String> = outputs
        .iter()
        .map(|r| String::from_utf8_lossy(r.payload.as_deref().unwrap()).into_owned())
        .collect();
    let distinct: HashSet<&String> = texts.iter().collect();
    eprintln!(
        "exactly-once test: {n} inputs, {} service calls over 4 runs (3 SIGKILLs), {} committed outputs",
        served_lines,
        texts.len()
    );
    assert_eq!(distinct.len(), n, "no gap: one output per input");
    assert_eq!(texts.len(), n, "no duplicate among committed outputs");
    for i in 0..n {
        assert!(
            distinct.contains(&format!("out-{i}")),
            "output for input {i}"
        );
    }
    assert!(
        served_lines > n,
        "the kills forced some inputs to be processed more than once ({served_lines} calls)"
    );
    let uncommitted = read_all(&output, "read_uncommitted").await;
    assert!(uncommitted.len() >= texts.len());
}
