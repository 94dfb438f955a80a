// `pyleak daemon`, the service: a real daemon process with its real eBPF programs, real
// Python targets, scraped by a real Prometheus server (Debian's `prometheus` package,
// installed by `cargo xtask setup`), its metrics checked by `promtool`, its pprof read by
// `go tool pprof`, its unit file checked by `systemd-analyze verify`, its readiness read
// from a datagram socket as systemd would. PID 1 is not systemd on these machines, so the
// unit itself is never started: that is the one thing mocked (NOTIFY_SOCKET), and said here.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use pyleak_e2e::{
    Python, Target, find_in_path, find_python, marker_line, pyleak, pyleak_bin, pyleak_command, require_root,
    run_command, serial, workspace_dir,
};

/// A running `pyleak daemon`, SIGTERM'd and reaped on drop; its stderr goes to a file that
/// failure messages include.
struct Daemon {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `pyleak daemon --listen 127.0.0.1:PORT ARGS...` and waits for /healthz.
    fn start(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let daemon = Daemon::spawn(args, env);
        daemon.wait_healthy();
        daemon
    }

    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        require_root();
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("daemon.log");
        let child = pyleak_command()
            .arg("daemon")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting pyleak daemon");
        Daemon { child: Some(child), port, log, _dir: dir }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok((200, _)) = try_get(self.port, "/healthz", None) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the daemon did not answer /healthz within 30 s\n--- log:\n{}", self.log());
    }

    /// GET `path`: (status, body); panics if the daemon does not answer.
    fn get(&self, path: &str) -> (u16, String) {
        let (status, body) = try_get(self.port, path, None)
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n--- log:\n{}", self.log()));
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn get_ok(&self, path: &str, accept: Option<&str>) -> Vec<u8> {
        match try_get(self.port, path, accept) {
            Ok((200, body)) => body,
            Ok((status, body)) => {
                panic!("GET {path}: {status} {}\n--- log:\n{}", String::from_utf8_lossy(&body), self.log())
            }
            Err(e) => panic!("GET {path}: {e}\n--- log:\n{}", self.log()),
        }
    }

    fn processes(&self) -> serde_json::Value {
        serde_json::from_slice(&self.get_ok("/api/processes", None)).expect("/api/processes is JSON")
    }

    fn traced_pids(&self) -> Vec<u32> {
        self.processes()["traced"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["pid"].as_u64().unwrap() as u32)
            .collect()
    }

    /// Waits until `pred(traced pids)` holds.
    fn wait_traced(&self, what: &str, timeout: Duration, pred: impl Fn(&[u32]) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let pids = self.traced_pids();
            if pred(&pids) {
                return;
            }
            if Instant::now() > deadline {
                panic!("{what}: not within {timeout:?} (traced: {pids:?})\n--- log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
    }

    /// SIGTERM, then the exit status (at most 30 s).
    fn terminate(mut self) -> (ExitStatus, String) {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, self.log());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the daemon did not exit within 30 s of SIGTERM\n--- log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Open file descriptors of the daemon, but for sockets (HTTP connections come and go
    /// with the test's own requests).
    fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read_link(e.path()).is_ok_and(|t| !t.to_string_lossy().starts_with("socket:"))
            })
            .count()
    }

    /// What each open descriptor is (`anon_inode:bpf-map`, `socket:[...]`), for messages.
    fn fds(&self) -> String {
        let mut kinds: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .flatten()
            .map(|e| std::fs::read_link(e.path()).map_or("?".into(), |t| t.display().to_string()))
            .collect();
        kinds.sort();
        kinds.join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A plain HTTP/1.0 GET on loopback: (status, body).
fn try_get(port: u16, path: &str, accept: Option<&str>) -> std::io::Result<(u16, Vec<u8>)> {
    request(port, "GET", path, accept)
}

fn request(port: u16, method: &str, path: &str, accept: Option<&str>) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    write!(stream, "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{accept}Content-Length: 0\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    Ok((status, raw[split + 4..].to_vec()))
}

fn python() -> Python {
    find_python("3.12").or_else(|| find_python("3.11")).expect("CPython 3.12 or 3.11 from pyenv")
}

fn tool(name: &str, package: &str) -> PathBuf {
    find_in_path(name).unwrap_or_else(|| {
        panic!("`{name}` is not installed (Debian package {package}); run `cargo xtask setup`")
    })
}

/// A Prometheus server on loopback scraping `target` every second.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target_port: u16) -> Prometheus {
        let binary = tool("prometheus", "prometheus");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: pyleak\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus");
        let p = Prometheus { child, port, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !matches!(try_get(port, "/-/ready", None), Ok((200, _))) {
            assert!(Instant::now() < deadline, "prometheus did not become ready within 60 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    /// The value of the single series `query` selects, once Prometheus has one.
    fn value(&self, query: &str, timeout: Duration) -> f64 {
        let path = format!("/api/v1/query?query={}", encode(query));
        let deadline = Instant::now() + timeout;
        loop {
            let (status, body) = try_get(self.port, &path, None).expect("querying prometheus");
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if status == 200
                && let Some(first) = json["data"]["result"].as_array().and_then(|r| r.first())
            {
                return first["value"][1].as_str().unwrap().parse().unwrap();
            }
            assert!(Instant::now() < deadline, "prometheus has no series for {query} (last answer: {json})");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The daemon traces a leaking program (attached as it starts); a real Prometheus scrapes
/// it; the leaking stack's outstanding bytes, queried through Prometheus, rise between two
/// scrapes. The same /metrics passes `promtool check metrics`. `pyleak dump` fetches an SVG
/// (well-formed, names the leaking function) and a pprof that `go tool pprof` reads.
#[test]
fn prometheus_scrapes_the_leak_and_dump_fetches_flamegraphs() {
    let _serial = serial();
    let python = python();
    // With the kernel programs' costs exported too (limits.bpf_stats), so promtool and
    // Prometheus check those series as well.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pyleak.toml");
    std::fs::write(&config, "[limits]\nbpf_stats = true\n").unwrap();
    let daemon = Daemon::start(&["--config", config.to_str().unwrap(), "--match", r"slow_leak\.py"], &[]);
    let mut target = Target::spawn(&python, "slow_leak.py", &[]);
    target.wait_for_line("ready");
    let pid = target.pid();
    daemon
        .wait_traced("the daemon attaches to the new process", Duration::from_secs(15), |p| p.contains(&pid));

    // promtool lints the Prometheus text format (it cannot parse OpenMetrics); both are served.
    let text = daemon.get_ok("/metrics", Some("text/plain"));
    let mut promtool = Command::new(tool("promtool", "prometheus"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool.stdin.take().unwrap().write_all(&text).unwrap();
    let out = promtool.wait_with_output().unwrap();
    let problems =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && problems.trim().is_empty(),
        "promtool check metrics: {}\n{problems}\n--- metrics:\n{}",
        out.status,
        String::from_utf8_lossy(&text)
    );
    let openmetrics = String::from_utf8(daemon.get_ok("/metrics", None)).unwrap();
    assert!(openmetrics.trim_end().ends_with("# EOF"), "OpenMetrics must end with # EOF:\n{openmetrics}");

    let prometheus = Prometheus::start(daemon.port);
    let script = target.script.clone();
    let line = marker_line(&script, "LEAK");
    let query = format!(r#"pyleak_stack_outstanding_bytes{{pid="{pid}",function="leak",line="{line}"}}"#);
    let first = prometheus.value(&query, Duration::from_secs(30));
    // slow_leak keeps 50 kB every 50 ms: a few seconds later the series must have grown.
    std::thread::sleep(Duration::from_secs(4));
    let second = prometheus.value(&query, Duration::from_secs(10));
    assert!(
        second > first && first > 0.0,
        "outstanding bytes at slow_leak.py:{line} should rise between scrapes: {first} then {second}\n--- log:\n{}",
        daemon.log()
    );
    // The kernel's accounting of the programs that recorded those bytes: time was spent in
    // the return program, and at most a millisecond per run (a unit mistake would not be).
    let runs = prometheus.value(
        &format!(r#"pyleak_bpf_program_runs_total{{pid="{pid}",program="alloc_exit"}}"#),
        Duration::from_secs(10),
    );
    let seconds = prometheus.value(
        &format!(r#"pyleak_bpf_program_run_seconds_total{{pid="{pid}",program="alloc_exit"}}"#),
        Duration::from_secs(10),
    );
    assert!(
        runs > 0.0 && seconds > 0.0 && seconds / runs < 1e-3,
        "alloc_exit: {runs} runs, {seconds} s\n--- log:\n{}",
        daemon.log()
    );

    let svg = dir.path().join("leak.svg");
    let url = daemon.url();
    let pid_arg = pid.to_string();
    let dump = |format: &str, out: &Path| {
        let finished = pyleak([
            "dump",
            "--daemon",
            url.as_str(),
            "--pid",
            pid_arg.as_str(),
            "--format",
            format,
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(finished.status.success(), "pyleak dump --format {format}\n{finished}");
    };
    dump("svg", &svg);
    let text = std::fs::read_to_string(&svg).unwrap();
    // inferno writes a DOCTYPE; allow it (the parser still refuses entity tricks).
    let options = roxmltree::ParsingOptions { allow_dtd: true, ..roxmltree::ParsingOptions::default() };
    let doc = roxmltree::Document::parse_with_options(&text, options)
        .unwrap_or_else(|e| panic!("the SVG is not well-formed XML: {e}"));
    assert!(
        doc.descendants().any(|n| n.text().is_some_and(|t| t.contains("leak"))),
        "the SVG does not name the leaking function"
    );
    let pprof = dir.path().join("leak.pb.gz");
    dump("pprof", &pprof);
    let mut go = Command::new(tool("go", "golang-go"));
    go.args(["tool", "pprof", "-top", "-sample_index=inuse_space"]).arg(&pprof).env("HOME", dir.path());
    let finished = run_command(go, Duration::from_secs(120));
    assert!(finished.status.success(), "go tool pprof\n{finished}");
    assert!(
        finished.stdout.contains("leak"),
        "go tool pprof -top does not show the leaking function\n{finished}"
    );

    let folded = daemon.get(&format!("/flamegraph?pid={pid}&format=folded"));
    assert_eq!(folded.0, 200, "{}", folded.1);
    let heaviest =
        folded.1.lines().max_by_key(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap()).unwrap();
    assert!(heaviest.contains(&format!("slow_leak.py:{line}")), "heaviest folded stack: {heaviest}");
    let (status, log) = daemon.terminate();
    assert!(status.success(), "SIGTERM: {status}\n{log}");
}

/// Processes that match are attached when they start and released when they exit: 20
/// short-lived Python processes in a row, each seen by the daemon, leave no traced process,
/// no metrics series and no file descriptor (programs, maps, links) behind.
#[test]
fn short_lived_processes_are_attached_and_released_without_leaks() {
    let _serial = serial();
    let python = python();
    let daemon = Daemon::start(&["--match", r"short_lived\.py"], &[]);
    let baseline = daemon.fd_count();
    let mut seen = Vec::new();
    for _ in 0..20 {
        let mut target = Target::spawn(&python, "short_lived.py", &[]);
        target.wait_for_line("ready");
        let pid = target.pid();
        daemon.wait_traced("the new process is attached", Duration::from_secs(15), |p| p.contains(&pid));
        target.close_stdin();
        target.wait_exit(Duration::from_secs(10));
        daemon.wait_traced("the exited process is released", Duration::from_secs(15), |p| !p.contains(&pid));
        seen.push(pid);
    }
    let metrics = String::from_utf8(daemon.get_ok("/metrics", None)).unwrap();
    for pid in &seen {
        assert!(
            !metrics.contains(&format!("pid=\"{pid}\"")),
            "series of exited pid {pid} remain:\n{metrics}"
        );
    }
    // Released means forgotten by the API; detaching (closing the programs, links and maps)
    // finishes a moment later.
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.fd_count() != baseline && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = daemon.fd_count();
    assert_eq!(
        after,
        baseline,
        "the daemon holds {after} fds (sockets aside) after 20 processes, {baseline} before:\n{}\n--- log:\n{}",
        daemon.fds(),
        daemon.log()
    );
    let log = daemon.log();
    assert_eq!(log.matches(" attached pid=").count(), 20, "one attach line per process:\n{log}");
    assert_eq!(
        log.matches("released: the process exited").count(),
        20,
        "one release line per process:\n{log}"
    );
    let (status, log) = daemon.terminate();
    assert!(status.success(), "SIGTERM: {status}\n{log}");
}

/// A traced process that execs a new Python program (same pid, same start time) is traced
/// anew: the new program's leak is seen at its line, and the old program's blocks, probes
/// and addresses are dropped. Before, the daemon kept the old session: the old blocks stayed
/// outstanding for good and the new program's allocations were read with the old one's
/// addresses.
#[test]
fn a_process_that_execs_is_traced_as_its_new_program() {
    let _serial = serial();
    let python = python();
    let script = pyleak_e2e::script("reexec.py");
    let (old_line, new_line) = (marker_line(&script, "OLD"), marker_line(&script, "NEW"));
    let daemon = Daemon::start(&["--match", r"reexec\.py"], &[]);
    let mut target = Target::spawn(&python, "reexec.py", &[]);
    target.wait_for_line("ready");
    let pid = target.pid();
    daemon.wait_traced("the process is attached", Duration::from_secs(15), |p| p.contains(&pid));
    let attaches = || daemon.log().matches(&format!(" attached pid={pid}")).count();
    assert_eq!(attaches(), 1, "{}", daemon.log());

    target.send("exec");
    let deadline = Instant::now() + Duration::from_secs(20);
    while attaches() < 2 {
        assert!(Instant::now() < deadline, "the new program was not attached within 20 s\n{}", daemon.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(daemon.log().contains("replaced its program"), "{}", daemon.log());
    target.send("go");
    target.wait_for_line("ready again");

    let report: serde_json::Value =
        serde_json::from_slice(&daemon.get_ok(&format!("/api/report?pid={pid}&group_by=line&top=20"), None))
            .unwrap();
    let at = |line: u32| {
        report["stacks"].as_array().unwrap().iter().find(|s| {
            s["frames"][0]["line"].as_u64() == Some(line as u64)
                && s["frames"][0]["file"].as_str().is_some_and(|f| f.ends_with("reexec.py"))
        })
    };
    let new = at(new_line).unwrap_or_else(|| panic!("no stack at reexec.py:{new_line} (# NEW)\n{report:#}"));
    let count = pyleak_e2e::script_const(&script, "NEW_COUNT");
    let bytes = count * pyleak_e2e::script_const(&script, "NEW_SIZE");
    let outstanding = new["outstanding_bytes"].as_u64().unwrap();
    assert!(
        (bytes..=bytes * 11 / 10 + 64 * 1024).contains(&outstanding),
        "# NEW holds {outstanding} bytes, want about {bytes}\n{report:#}"
    );
    assert!(at(old_line).is_none(), "the old program's blocks (# OLD) are still outstanding\n{report:#}");
    target.close_stdin();
    target.wait_exit(Duration::from_secs(10));
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{status}\n{log}");
}

/// Readiness reaches NOTIFY_SOCKET (a datagram socket bound here, as systemd binds one),
/// after the processes running at start are attached; SIGTERM detaches and exits 0.
#[test]
fn readiness_is_notified_and_sigterm_exits_zero() {
    let _serial = serial();
    let python = python();
    let mut target = Target::spawn(&python, "slow_leak.py", &[]);
    target.wait_for_line("ready");
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let pid = target.pid().to_string();
    let daemon = Daemon::spawn(&["--pid", &pid], &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())]);
    let mut buf = [0u8; 256];
    let n =
        socket.recv(&mut buf).unwrap_or_else(|e| panic!("no readiness within 30 s: {e}\n{}", daemon.log()));
    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(message.starts_with("READY=1"), "first notification: {message:?}");
    // Ready means the running target is attached already.
    assert_eq!(daemon.traced_pids(), vec![target.pid()], "READY=1 came before the target was attached");
    let (status, log) = daemon.terminate();
    assert!(status.success(), "SIGTERM should exit 0, got {status}\n{log}");
    let n = socket.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(log.contains("detached"), "one log line per detach:\n{log}");
}

/// A bad configuration file stops the daemon at start with the file, line and key; on
/// SIGHUP the running configuration is kept instead. Bad requests get 400/404/405 with a
/// reason, and the daemon keeps serving. A reload that stops matching releases the process.
#[test]
fn bad_config_and_bad_requests_get_clear_errors() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pyleak.toml");
    std::fs::write(&config, "[limits]\nmax_processes = 4\nstack_dpeth = 10\n").unwrap();
    let finished = pyleak(["daemon", "--config", config.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    assert_eq!(finished.status.code(), Some(1), "{finished}");
    assert!(
        finished.stderr.contains("pyleak.toml:3:") && finished.stderr.contains("stack_dpeth"),
        "the error should name the file, the line and the key\n{finished}"
    );

    let python = python();
    let mut target = Target::spawn(&python, "slow_leak.py", &[]);
    target.wait_for_line("ready");
    std::fs::write(&config, "[[target]]\ncmdline = 'slow_leak\\.py'\n").unwrap();
    let daemon = Daemon::start(&["--config", config.to_str().unwrap()], &[]);
    daemon.wait_traced("the configured target is attached", Duration::from_secs(15), |p| {
        p.contains(&target.pid())
    });

    for (path, status, needle) in [
        ("/api/report", 400, "pid: required"),
        ("/api/report?pid=1&format=png", 400, "format"),
        ("/api/report?pid=1&top=many", 400, "top"),
        ("/api/report?pid=4000000", 404, "not traced"),
        ("/flamegraph?pid=4000000&format=svg", 404, "not traced"),
        ("/nothing-here", 404, "no such path"),
    ] {
        let (got, body) = daemon.get(path);
        assert_eq!(got, status, "GET {path}: {body}");
        assert!(body.contains(needle), "GET {path}: {body}");
    }
    let (status, body) = request(daemon.port, "POST", "/metrics", None).unwrap();
    assert_eq!(status, 405, "{}", String::from_utf8_lossy(&body));
    let report: serde_json::Value = serde_json::from_slice(
        &daemon.get_ok(&format!("/api/report?pid={}&group_by=line&top=3", target.pid()), None),
    )
    .unwrap();
    assert_eq!(report["pid"].as_u64(), Some(target.pid() as u64));
    assert!(report["stacks"].as_array().unwrap().len() <= 3);

    // A broken file on reload keeps the running configuration.
    std::fs::write(&config, "[[target]]\ncmdline = '('\n").unwrap();
    daemon.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(daemon.get("/healthz").0, 200);
    assert!(daemon.log().contains("reload failed"), "{}", daemon.log());
    assert!(daemon.traced_pids().contains(&target.pid()));
    // A valid one that no longer matches releases the process.
    std::fs::write(&config, "[[target]]\ncmdline = 'nothing-matches-this'\n").unwrap();
    daemon.signal(libc::SIGHUP);
    daemon
        .wait_traced("the process no longer matching is released", Duration::from_secs(15), |p| p.is_empty());
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{status}\n{log}");
}

/// The unit file passes `systemd-analyze verify` without a warning, and `install-service`
/// installs exactly it.
#[test]
fn unit_file_verifies_and_installs() {
    let analyze = tool("systemd-analyze", "systemd");
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(workspace_dir().join("packaging/pyleak.service")).unwrap();
    // ExecStart must name an existing binary for verify: point it at the one under test.
    let local = unit.replace("/usr/local/bin/pyleak", pyleak_bin().to_str().unwrap());
    let path = dir.path().join("pyleak.service");
    std::fs::write(&path, local).unwrap();
    let mut command = Command::new(analyze);
    command.arg("verify").arg(&path);
    let finished = run_command(command, Duration::from_secs(60));
    assert!(
        finished.status.success() && finished.stderr.trim().is_empty() && finished.stdout.trim().is_empty(),
        "systemd-analyze verify\n{finished}"
    );

    let root = dir.path().join("root");
    let finished = pyleak(["install-service", "--root", root.to_str().unwrap()]);
    assert!(finished.status.success(), "{finished}");
    assert_eq!(std::fs::read_to_string(root.join("etc/systemd/system/pyleak.service")).unwrap(), unit);
    assert!(root.join("etc/pyleak/pyleak.toml").is_file());
    assert!(root.join("usr/local/bin/pyleak").is_file());
}
