//! `portico-proxy init`: installs the iptables rules that send a pod's TCP traffic through its
//! sidecar. The injected `portico-init` container runs it once, as root with NET_ADMIN, before
//! the proxy starts; the rules live in the pod's network namespace and outlive the container.
//!
//! ```text
//!  nat PREROUTING ─► PORTICO_INBOUND ─► admin port, --skip-inbound-ports ─► RETURN
//!                                    └─► REDIRECT --to-ports <inbound port>
//!  nat OUTPUT ─────► PORTICO_OUTPUT ──► proxy's uid, 127.0.0.0/8, --skip-outbound-ports,
//!                                    │  --skip-outbound-cidrs ─► RETURN
//!                                    └─► REDIRECT --to-ports <outbound port>
//! ```
//!
//! The proxy's own connections are recognised by its user id (`-m owner --uid-owner`), which is
//! why the proxy must run as a user nothing else in the pod uses. Running `init` twice leaves the
//! same rules: the chains are flushed and refilled, and the jumps into them removed first.
//! IPv4 only (`iptables`); IPv6 CIDRs in `--skip-outbound-cidrs` are ignored with a warning.

use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};
use clap::Parser;

/// The chain PREROUTING jumps to.
pub const INBOUND_CHAIN: &str = "PORTICO_INBOUND";
/// The chain OUTPUT jumps to.
pub const OUTPUT_CHAIN: &str = "PORTICO_OUTPUT";

/// Installs the traffic redirection for a meshed pod (run once, as root, with NET_ADMIN).
#[derive(Debug, Clone, Parser)]
#[command(name = "portico-proxy init", bin_name = "portico-proxy init")]
pub struct InitArgs {
    /// Port of the proxy's INBOUND listener.
    #[arg(long, default_value_t = 4143)]
    pub inbound_port: u16,
    /// Port of the proxy's OUTBOUND listener.
    #[arg(long, default_value_t = 4140)]
    pub outbound_port: u16,
    /// User id the proxy runs as; its own connections are never redirected.
    #[arg(long, default_value_t = 2102)]
    pub proxy_uid: u32,
    /// The proxy's admin port; never redirected, so the kubelet's probes reach the proxy.
    #[arg(long, default_value_t = 4191)]
    pub admin_port: u16,
    /// Inbound ports that bypass the proxy, comma-separated (`22,9000-9010`).
    #[arg(long, default_value = "")]
    pub skip_inbound_ports: String,
    /// Outbound destination ports that bypass the proxy, comma-separated.
    #[arg(long, default_value = "")]
    pub skip_outbound_ports: String,
    /// Outbound destination CIDRs that bypass the proxy, comma-separated (`10.0.0.0/8`).
    #[arg(long, default_value = "")]
    pub skip_outbound_cidrs: String,
    /// Print the commands instead of running them.
    #[arg(long)]
    pub dry_run: bool,
}

/// What `init` does: commands that remove earlier jumps (allowed to fail, there may be none),
/// then one `iptables-restore --noflush` input that (re)creates the chains atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `iptables` argument lists whose failure is expected when nothing was installed before.
    pub cleanup: Vec<Vec<String>>,
    /// Input for `iptables-restore --noflush`.
    pub restore: String,
}

impl Plan {
    /// The plan as a shell script, for `--dry-run`.
    pub fn script(&self) -> String {
        let mut s = String::from("# remove jumps left by an earlier run (errors ignored)\n");
        for c in &self.cleanup {
            s.push_str("iptables ");
            s.push_str(&c.join(" "));
            s.push_str(" 2>/dev/null\n");
        }
        s.push_str("iptables-restore --noflush <<'EOF'\n");
        s.push_str(&self.restore);
        s.push_str("EOF\n");
        s
    }
}

/// One port (`80`) or an inclusive range (`9000-9010`), written the way iptables wants it.
fn port_spec(s: &str) -> anyhow::Result<String> {
    let port = |p: &str| match p.trim().parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => bail!("{p:?} is not a port (1-65535)"),
    };
    match s.split_once(['-', ':']) {
        Some((a, b)) => {
            let (a, b) = (port(a)?, port(b)?);
            if a > b {
                bail!("port range {s:?} is backwards");
            }
            Ok(format!("{a}:{b}"))
        }
        None => Ok(port(s)?.to_string()),
    }
}

fn items(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// An IPv4 CIDR (a bare address means /32); `None` for IPv6, which iptables does not handle.
fn cidr_spec(s: &str) -> anyhow::Result<Option<String>> {
    let (ip, len) = s.split_once('/').unwrap_or((s, ""));
    let ip: IpAddr = ip.parse().with_context(|| format!("{s:?} is not a CIDR"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len: u8 = if len.is_empty() {
        max
    } else {
        match len.parse() {
            Ok(n) if n <= max => n,
            _ => bail!("{s:?} has a bad prefix length"),
        }
    };
    Ok(ip.is_ipv4().then(|| format!("{ip}/{len}")))
}

/// Builds the rules for `args`; fails on a malformed port or CIDR, naming it.
pub fn plan(args: &InitArgs) -> anyhow::Result<Plan> {
    let mut r = String::from("*nat\n");
    // Declaring a chain under --noflush creates it, or flushes it when it exists: this is what
    // makes a second run replace the rules instead of appending to them.
    r.push_str(&format!(
        ":{INBOUND_CHAIN} - [0:0]\n:{OUTPUT_CHAIN} - [0:0]\n"
    ));

    let mut skip_in = vec![args.admin_port.to_string()];
    for p in items(&args.skip_inbound_ports) {
        let p = port_spec(p).context("--skip-inbound-ports")?;
        // The webhook lists the admin port too; one rule per port is enough.
        if !skip_in.contains(&p) {
            skip_in.push(p);
        }
    }
    for p in skip_in {
        r.push_str(&format!(
            "-A {INBOUND_CHAIN} -p tcp --dport {p} -j RETURN\n"
        ));
    }
    r.push_str(&format!(
        "-A {INBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {}\n",
        args.inbound_port
    ));

    // The proxy's own connections (to endpoints, and passthrough to original destinations)
    // must leave the pod as they are, or they would loop back into it.
    r.push_str(&format!(
        "-A {OUTPUT_CHAIN} -m owner --uid-owner {} -j RETURN\n",
        args.proxy_uid
    ));
    r.push_str(&format!("-A {OUTPUT_CHAIN} -d 127.0.0.0/8 -j RETURN\n"));
    for p in items(&args.skip_outbound_ports) {
        let p = port_spec(p).context("--skip-outbound-ports")?;
        r.push_str(&format!("-A {OUTPUT_CHAIN} -p tcp --dport {p} -j RETURN\n"));
    }
    for c in items(&args.skip_outbound_cidrs) {
        match cidr_spec(c).context("--skip-outbound-cidrs")? {
            Some(c) => r.push_str(&format!("-A {OUTPUT_CHAIN} -d {c} -j RETURN\n")),
            None => eprintln!("portico-proxy init: {c}: IPv6 is not redirected; ignored"),
        }
    }
    r.push_str(&format!(
        "-A {OUTPUT_CHAIN} -p tcp -j REDIRECT --to-ports {}\n",
        args.outbound_port
    ));

    let jump_in = ["PREROUTING", "-p", "tcp", "-j", INBOUND_CHAIN];
    let jump_out = ["OUTPUT", "-p", "tcp", "-j", OUTPUT_CHAIN];
    r.push_str(&format!(
        "-A {}\n-A {}\nCOMMIT\n",
        jump_in.join(" "),
        jump_out.join(" ")
    ));

    let delete = |jump: &[&str]| {
        let mut c = vec!["-t".to_owned(), "nat".to_owned(), "-D".to_owned()];
        c.extend(jump.iter().map(|s| (*s).to_owned()));
        c
    };
    Ok(Plan {
        cleanup: vec![delete(&jump_in), delete(&jump_out)],
        restore: r,
    })
}

/// Runs `init`: prints the plan with `--dry-run`, applies it otherwise.
pub fn run(args: InitArgs) -> anyhow::Result<()> {
    let plan = plan(&args)?;
    if args.dry_run {
        print!("{}", plan.script());
        return Ok(());
    }
    for c in &plan.cleanup {
        // A jump appears once per earlier run that did not clean up; remove them all.
        for _ in 0..16 {
            let ok = Command::new("iptables")
                .args(c)
                .stderr(Stdio::null())
                .status()
                .context("running iptables (is the `iptables` package installed?)")?
                .success();
            if !ok {
                break;
            }
        }
    }
    let mut child = Command::new("iptables-restore")
        .arg("--noflush")
        .stdin(Stdio::piped())
        .spawn()
        .context("running iptables-restore (is the `iptables` package installed?)")?;
    child
        .stdin
        .take()
        .context("iptables-restore stdin")?
        .write_all(plan.restore.as_bytes())
        .context("writing to iptables-restore")?;
    let status = child.wait().context("waiting for iptables-restore")?;
    if !status.success() {
        bail!(
            "iptables-restore failed ({status}); the rules were:\n{}",
            plan.restore
        );
    }
    eprintln!(
        "portico-proxy init: inbound → :{}, outbound → :{}, proxy uid {} exempt",
        args.inbound_port, args.outbound_port, args.proxy_uid
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> InitArgs {
        let mut argv = vec!["init"];
        argv.extend(extra);
        InitArgs::parse_from(argv)
    }

    #[test]
    fn defaults_redirect_to_the_proxy_ports_and_exempt_its_uid_and_admin_port() {
        let p = plan(&args(&[])).expect("plan");
        assert_eq!(
            p.restore,
            "*nat\n\
             :PORTICO_INBOUND - [0:0]\n\
             :PORTICO_OUTPUT - [0:0]\n\
             -A PORTICO_INBOUND -p tcp --dport 4191 -j RETURN\n\
             -A PORTICO_INBOUND -p tcp -j REDIRECT --to-ports 4143\n\
             -A PORTICO_OUTPUT -m owner --uid-owner 2102 -j RETURN\n\
             -A PORTICO_OUTPUT -d 127.0.0.0/8 -j RETURN\n\
             -A PORTICO_OUTPUT -p tcp -j REDIRECT --to-ports 4140\n\
             -A PREROUTING -p tcp -j PORTICO_INBOUND\n\
             -A OUTPUT -p tcp -j PORTICO_OUTPUT\n\
             COMMIT\n"
        );
        assert_eq!(
            p.cleanup[0].join(" "),
            "-t nat -D PREROUTING -p tcp -j PORTICO_INBOUND"
        );
        assert_eq!(
            p.cleanup[1].join(" "),
            "-t nat -D OUTPUT -p tcp -j PORTICO_OUTPUT"
        );
    }

    #[test]
    fn skipped_ports_and_cidrs_return_before_the_redirect() {
        let p = plan(&args(&[
            "--skip-inbound-ports",
            "22, 9000-9010",
            "--skip-outbound-ports",
            "3306",
            "--skip-outbound-cidrs",
            "10.0.0.0/8,192.168.1.1,fd00::/8",
            "--outbound-port",
            "15001",
            "--proxy-uid",
            "1337",
        ]))
        .expect("plan");
        let lines: Vec<&str> = p.restore.lines().collect();
        let pos = |l: &str| {
            lines
                .iter()
                .position(|x| *x == l)
                .unwrap_or_else(|| panic!("missing {l:?} in\n{}", p.restore))
        };
        let redirect_out = pos("-A PORTICO_OUTPUT -p tcp -j REDIRECT --to-ports 15001");
        let redirect_in = pos("-A PORTICO_INBOUND -p tcp -j REDIRECT --to-ports 4143");
        assert!(pos("-A PORTICO_INBOUND -p tcp --dport 22 -j RETURN") < redirect_in);
        assert!(pos("-A PORTICO_INBOUND -p tcp --dport 9000:9010 -j RETURN") < redirect_in);
        assert!(pos("-A PORTICO_OUTPUT -m owner --uid-owner 1337 -j RETURN") < redirect_out);
        assert!(pos("-A PORTICO_OUTPUT -p tcp --dport 3306 -j RETURN") < redirect_out);
        assert!(pos("-A PORTICO_OUTPUT -d 10.0.0.0/8 -j RETURN") < redirect_out);
        assert!(pos("-A PORTICO_OUTPUT -d 192.168.1.1/32 -j RETURN") < redirect_out);
        assert!(!p.restore.contains("fd00"), "IPv6 is left out");
    }

    #[test]
    fn empty_lists_from_the_webhook_are_accepted() {
        let p = plan(&args(&[
            "--skip-inbound-ports",
            "4191",
            "--skip-outbound-ports",
            "",
            "--skip-outbound-cidrs",
            "",
        ]))
        .expect("plan");
        assert_eq!(p.restore.matches("--dport 4191").count(), 1, "listed once");
    }

    #[test]
    fn malformed_lists_are_refused_with_the_flag_named() {
        for (flag, value) in [
            ("--skip-inbound-ports", "http"),
            ("--skip-outbound-ports", "0"),
            ("--skip-outbound-ports", "90-80"),
            ("--skip-outbound-cidrs", "10.0.0.0/33"),
            ("--skip-outbound-cidrs", "example.com"),
        ] {
            let e = plan(&args(&[flag, value])).expect_err(value);
            assert!(format!("{e:#}").starts_with(flag), "{flag} {value}: {e:#}");
        }
    }

    #[test]
    fn dry_run_script_removes_old_jumps_then_restores() {
        let s = plan(&args(&[])).expect("plan").script();
        assert!(s.contains("iptables -t nat -D OUTPUT -p tcp -j PORTICO_OUTPUT 2>/dev/null\n"));
        assert!(s.contains("iptables-restore --noflush <<'EOF'\n*nat\n"));
        assert!(s.ends_with("COMMIT\nEOF\n"));
    }
}
