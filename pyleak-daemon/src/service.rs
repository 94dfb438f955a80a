//! The daemon's clients and installation: `pyleak dump` (a report from a running daemon over
//! HTTP) and `pyleak install-service` (the systemd unit, the example configuration, the
//! binary).
use std::{
    io::Read,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

use crate::{
    cli::ReportArgs,
    config::{Config, DEFAULT_PATH as DEFAULT_CONFIG},
    report::GroupBy,
};

/// The unit file shipped in the repository.
pub const UNIT: &str = include_str!("../../packaging/pyleak.service");
/// The documented example configuration.
pub const EXAMPLE_CONFIG: &str = include_str!("../../packaging/pyleak.toml");

/// `pyleak dump`.
pub fn dump(daemon: Option<&str>, pid: u32, rep: &ReportArgs) -> Result<()> {
    crate::commands::check_report_args(rep)?;
    let base = match daemon {
        // `host:port`, as --listen takes it, means the daemon's plain HTTP there.
        Some(url) if !url.contains("://") => format!("http://{}", url.trim_end_matches('/')),
        Some(url) => url.trim_end_matches('/').to_string(),
        None => default_daemon_url(),
    };
    let url = format!("{base}/api/report?{}", report_query(pid, rep));
    tracing::debug!(url, "fetching");
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut response = agent.get(&url).call().map_err(|e| {
        anyhow::anyhow!(
            "no pyleak daemon answers at {base} ({e}): start it (systemctl start pyleak, or pyleak daemon), or pass --daemon URL"
        )
    })?;
    let status = response.status();
    let mut body = Vec::new();
    response
        .body_mut()
        .as_reader()
        .read_to_end(&mut body)
        .with_context(|| format!("reading the daemon's answer from {base}"))?;
    if !status.is_success() {
        bail!("the daemon at {base} answered {status}: {}", String::from_utf8_lossy(&body).trim());
    }
    crate::commands::write_output(&body, rep)
}

/// The query string of `/api/report` for these report options.
pub fn report_query(pid: u32, rep: &ReportArgs) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("pid", &pid.to_string());
    q.append_pair("format", &value_name(rep.format));
    if rep.group_by != GroupBy::default() {
        q.append_pair("group_by", &value_name(rep.group_by));
    }
    if let Some(top) = rep.top {
        q.append_pair("top", &top.to_string());
    }
    if let Some(age) = rep.min_age {
        q.append_pair("min_age", &age.to_string());
    }
    for g in &rep.include {
        q.append_pair("include", g);
    }
    for g in &rep.exclude {
        q.append_pair("exclude", g);
    }
    if let Some(n) = rep.frames {
        q.append_pair("frames", &n.to_string());
    }
    q.finish()
}

fn value_name<T: clap::ValueEnum>(v: T) -> String {
    v.to_possible_value().expect("no skipped variants").get_name().to_string()
}

/// `http://<listen of /etc/pyleak/pyleak.toml>`, else the default address.
fn default_daemon_url() -> String {
    let listen =
        Config::load(Path::new(DEFAULT_CONFIG)).map(|c| c.listen).unwrap_or(Config::default().listen);
    format!("http://{listen}")
}

/// `pyleak install-service --root DIR`.
pub fn install(root: &Path) -> Result<()> {
    let unit = root.join("etc/systemd/system/pyleak.service");
    let config = root.join("etc/pyleak/pyleak.toml");
    let binary = root.join("usr/local/bin/pyleak");
    write_file(&unit, UNIT.as_bytes(), 0o644)?;
    println!("installed {}", unit.display());
    if config.exists() {
        println!("kept the existing {}", config.display());
    } else {
        write_file(&config, EXAMPLE_CONFIG.as_bytes(), 0o644)?;
        println!("installed {} (edit its [[target]] tables)", config.display());
    }
    let me = std::env::current_exe().context("finding this binary")?;
    if me != binary {
        let bytes = std::fs::read(&me).with_context(|| format!("reading {}", me.display()))?;
        write_file(&binary, &bytes, 0o755)?;
        println!("installed {}", binary.display());
    }
    if root == Path::new("/") && Path::new("/run/systemd/system").is_dir() {
        let status = std::process::Command::new("systemctl").arg("daemon-reload").status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("pyleak: warning: systemctl daemon-reload failed; run it yourself");
        }
        println!("next: systemctl enable --now pyleak");
    } else {
        println!("next, on the host: systemctl daemon-reload && systemctl enable --now pyleak");
    }
    Ok(())
}

fn write_file(path: &PathBuf, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Through a temporary file, so a running binary or a half-written unit is never seen.
    let tmp = path.with_extension("pyleak-tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path).with_context(|| format!("installing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::report::Format;

    fn report_args(args: &[&str]) -> ReportArgs {
        let cli = crate::cli::Cli::try_parse_from(["pyleak", "dump", "--pid", "7"].iter().chain(args.iter()))
            .unwrap();
        match cli.command {
            crate::cli::Command::Dump { report, .. } => report,
            _ => unreachable!(),
        }
    }

    #[test]
    fn dump_sends_the_report_options_the_server_parses() {
        let rep = report_args(&[
            "--format",
            "svg",
            "--group-by",
            "line",
            "--top",
            "3",
            "--min-age",
            "2.5",
            "--include",
            "app/*.py",
            "--exclude",
            "*/site-packages/*",
            "--frames",
            "4",
        ]);
        let query = report_query(7, &rep);
        let q = crate::http::parse_report_query(&query, Format::Json).unwrap();
        assert_eq!(q.pid, 7);
        assert_eq!(q.format, Format::Svg);
        assert_eq!(q.group_by, GroupBy::Line);
        assert_eq!(q.top, Some(3));
        assert_eq!(q.min_age, Some(std::time::Duration::from_millis(2500)));
        assert_eq!(q.include, vec!["app/*.py"]);
        assert_eq!(q.exclude, vec!["*/site-packages/*"]);
        assert_eq!(q.frames, Some(4));
    }

    #[test]
    fn install_writes_the_unit_and_keeps_an_existing_config() {
        let root = tempfile::tempdir().unwrap();
        let config = root.path().join("etc/pyleak/pyleak.toml");
        std::fs::create_dir_all(config.parent().unwrap()).unwrap();
        std::fs::write(&config, "# mine\n").unwrap();
        install(root.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&config).unwrap(), "# mine\n");
        let unit = std::fs::read_to_string(root.path().join("etc/systemd/system/pyleak.service")).unwrap();
        assert_eq!(unit, UNIT);
        assert!(root.path().join("usr/local/bin/pyleak").is_file());
    }
}
