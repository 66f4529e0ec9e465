//! `zoneguard install-state` and `zoneguard switch ...`: the state database
//! from scripts and runbooks, without a console.

use std::time::Duration;

use anyhow::Context;
use tokio_postgres::Client;

use crate::policy::{Policy, PolicyError, Settings};

#[derive(clap::Args, Debug)]
pub struct InstallStateArgs {
    /// A superuser's URL to the database that will hold the state (the
    /// guard's default is the maintenance database, postgres).
    #[arg(long, required_unless_present = "print")]
    pub database_url: Option<String>,
    /// The role the guards connect as (LOGIN only, no other attribute). Its
    /// password is set from ZONEGUARD__STATE__PASSWORD when that is set.
    #[arg(long, default_value = "zoneguard_state")]
    pub role: String,
    /// Print the SQL instead of running it.
    #[arg(long)]
    pub print: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum SwitchCommand {
    /// Flip a switch for every instance: on, off, or default (back to the
    /// policy file's default). Recorded in the state database's flip log.
    Set {
        name: String,
        /// on, off or default.
        position: String,
        /// Why (kept in the flip log and every instance's audit log).
        #[arg(long)]
        reason: Option<String>,
        /// The state database (default: from the policy file's [proxy]
        /// upstream and [state] settings).
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Positions, the newest flips and the instances with their status.
    Show {
        #[arg(long)]
        database_url: Option<String>,
    },
}

pub async fn install_state(args: &InstallStateArgs) -> anyhow::Result<()> {
    let verifier = std::env::var("ZONEGUARD__STATE__PASSWORD")
        .ok()
        .filter(|p| !p.is_empty())
        .map(|p| crate::admin::scram_verifier(&p));
    let sql = super::install_sql(&args.role, verifier.as_deref());
    if args.print {
        print!("{sql}");
        return Ok(());
    }
    let url = args.database_url.as_deref().expect("required by clap");
    let client =
        crate::backfill::run::connect(url, Duration::from_secs(10), "zoneguard install-state")
            .await?;
    client
        .batch_execute(&sql)
        .await
        .context("install-state failed (nothing was changed)")?;
    let db: String = client
        .query_one("SELECT current_database()::text", &[])
        .await?
        .get(0);
    println!(
        "installed: schema zoneguard in database {db}, role {} (connects with LOGIN only{})",
        args.role,
        if verifier.is_some() {
            "; password set from ZONEGUARD__STATE__PASSWORD"
        } else {
            ""
        }
    );
    Ok(())
}

/// Runs `zoneguard switch ...`; `loaded` is the policy file, which names
/// the switches and says where the state database is (an invalid file does
/// not stop a flip given --database-url).
pub async fn switch(
    cmd: &SwitchCommand,
    loaded: Result<(Policy, Settings), PolicyError>,
) -> anyhow::Result<()> {
    let (url, policy) = match cmd {
        SwitchCommand::Set { database_url, .. } | SwitchCommand::Show { database_url } => {
            (database_url.as_deref(), loaded)
        }
    };
    let client = match (url, &policy) {
        (Some(url), _) => {
            crate::backfill::run::connect(url, Duration::from_secs(10), "zoneguard switch").await?
        }
        (None, Ok((_, settings))) => connect(settings).await?,
        (None, Err(e)) => anyhow::bail!(
            "{e}\n(the policy file says where the state database is: fix it, or give --database-url)"
        ),
    };
    let policy = policy.ok().map(|(p, _)| p);
    match cmd {
        SwitchCommand::Set {
            name,
            position,
            reason,
            ..
        } => set(&client, policy.as_ref(), name, position, reason.as_deref()).await,
        SwitchCommand::Show { .. } => show(&client).await,
    }
}

async fn connect(settings: &Settings) -> anyhow::Result<Client> {
    let upstream =
        crate::upstream::Upstream::from_settings(&settings.proxy).map_err(anyhow::Error::msg)?;
    let s = &settings.state;
    let login = crate::upstream::Login {
        user: &s.user,
        password: &s.password,
        database: &s.database,
        application_name: "zoneguard switch",
    };
    let timeout = Duration::from_secs(settings.proxy.connect_timeout_secs.max(1));
    upstream
        .own_connection(&login, timeout, |_, _| {})
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the state database {} as {}: {}",
                s.database,
                s.user,
                super::StateError::from(e).explain()
            )
        })
}

async fn set(
    client: &Client,
    policy: Option<&Policy>,
    name: &str,
    position: &str,
    reason: Option<&str>,
) -> anyhow::Result<()> {
    let on = super::parse_position(position).map_err(anyhow::Error::msg)?;
    let mut known: Vec<String> = super::positions(client)
        .await
        .map_err(|e| anyhow::anyhow!(e.explain()))?
        .into_iter()
        .map(|p| p.name)
        .collect();
    known.extend(policy.into_iter().flat_map(|p| p.switches.keys().cloned()));
    known.sort();
    known.dedup();
    anyhow::ensure!(
        known.iter().any(|k| k == name),
        "no switch named {name:?} in the policy file or the state database (known: {})",
        known.join(", ")
    );
    let user = ["USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "unknown".into());
    let who = format!("cli:{user}@{}", super::handle::host_name());
    let flip = super::flip(client, name, on, &who, reason, None)
        .await
        .map_err(|e| anyhow::anyhow!(e.explain()))?;
    let show = super::position_word;
    println!(
        "{name}: {} -> {} (generation {}); every instance follows within a second",
        show(flip.from),
        show(on),
        flip.generation
    );
    Ok(())
}

async fn show(client: &Client) -> anyhow::Result<()> {
    let e = |e: super::StateError| anyhow::anyhow!(e.explain());
    let show = super::position_word;
    println!("switches:");
    for p in super::positions(client).await.map_err(e)? {
        println!(
            "  {:<28} {:<8} generation {:<6} {} {}",
            p.name,
            show(p.on),
            p.generation,
            p.changed_by.unwrap_or_default(),
            p.reason.map(|r| format!("({r})")).unwrap_or_default()
        );
    }
    println!("newest flips:");
    for f in super::flips(client, 10).await.map_err(e)? {
        println!(
            "  {} {} {} -> {} (generation {}) by {}{}{}",
            f.at,
            f.switch,
            show(f.from),
            show(f.to),
            f.generation,
            f.who,
            f.instance.map(|i| format!(" via {i}")).unwrap_or_default(),
            f.reason.map(|r| format!(": {r}")).unwrap_or_default()
        );
    }
    println!("instances:");
    for i in super::instances(client, super::silent_after(&Default::default()))
        .await
        .map_err(e)?
    {
        println!(
            "  {:<28} {:<10} checksum {} generation {} {} last seen {} ms ago",
            i.instance,
            i.status,
            i.policy_checksum,
            i.switch_generation,
            i.positions,
            i.last_seen_ms
        );
    }
    Ok(())
}
