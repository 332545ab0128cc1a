//! The `[arti]` table of config.toml, handed to Arti's own configuration loader.
//!
//! The table takes exactly the keys of Arti's `arti.toml` that configure the client library
//! (`[arti.tor_network]`, `[arti.path_rules]`, `[arti.override_net_params]`,
//! `[arti.storage]`, `[arti.bridges]`, ...), with Arti's own meaning and defaults. This is how
//! an operator points the balancer at bridges or a private network; there are no test-only
//! switches. Two things differ from a plain Arti client:
//!
//! * Arti's storage defaults to the user's home directory. A daemon keeps its state in its
//!   state directory instead, so `storage.state_dir` and `storage.cache_dir` default to
//!   `<state-dir>/arti/state` and `<state-dir>/arti/cache` (the table can still override them).
//! * A balancer never opens exit streams, so Arti's preemptive exit circuits (built for ports
//!   80 and 443 by default) would only cost relays' and our own resources:
//!   `preemptive_circuits.initial_predicted_ports` defaults to `[]`.
//! * Keys Arti does not recognise are errors (Arti itself only warns), like everywhere else in
//!   our config: a misspelt `fallback_caches` would otherwise send us to the public network.

use std::path::Path;

use arti_client::config::TorClientConfig;
use tor_config::load::{resolve_return_results, ConfigResolveOptions};
use tor_config::sources::MustRead;
use tor_config::{ConfigurationSource, ConfigurationSources};

use crate::config::{Config, ConfigError};
use crate::params;

/// An Arti client configuration that Arti's loader accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct ArtiSettings {
    client_config: TorClientConfig,
}

/// Why the `[arti]` table was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtiConfigError {
    /// The key below `[arti]` at fault, dotted (`tor_network.fallback_caches`), or empty.
    pub key: String,
    pub message: String,
}

/// Keys that appear in arti.toml but configure the `arti` program, not the client library.
const ARTI_PROGRAM_SECTIONS: &[&str] = &["application", "proxy", "logging", "rpc", "metrics"];

impl ArtiSettings {
    /// Resolve `config`'s `[arti]` table; an error names the key below `[arti]` at fault, in
    /// config.toml's one-line form.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        ArtiSettings::from_table(&config.arti, &config.state_dir).map_err(|err| {
            let key = match err.key.as_str() {
                "" => "arti".to_owned(),
                below => format!("arti.{below}"),
            };
            ConfigError::invalid_key(config, &key, err.message)
        })
    }

    /// Resolve `table` (the contents of `[arti]`) the way Arti resolves arti.toml, with the
    /// defaults described in the module documentation.
    pub fn from_table(table: &toml::Table, state_dir: &Path) -> Result<Self, ArtiConfigError> {
        if let Some(section) = ARTI_PROGRAM_SECTIONS
            .iter()
            .find(|s| table.contains_key(**s))
        {
            return Err(ArtiConfigError {
                key: (*section).to_owned(),
                message:
                    "configures the `arti` command-line program, not the embedded client; remove it"
                        .into(),
            });
        }

        let mut sources = ConfigurationSources::new_empty();
        sources.push_source(
            ConfigurationSource::from_verbatim(balancer_defaults(state_dir)),
            MustRead::MustRead,
        );
        let user_table = toml::to_string(table).map_err(|err| ArtiConfigError {
            key: String::new(),
            message: err.to_string(),
        })?;
        sources.push_source(
            ConfigurationSource::from_verbatim(user_table),
            MustRead::MustRead,
        );
        let tree = sources.load().map_err(|err| ArtiConfigError {
            key: String::new(),
            message: error_chain(&err),
        })?;

        let resolved =
            resolve_return_results::<TorClientConfig>(&tree, &ConfigResolveOptions::default())
                .map_err(|err| ArtiConfigError {
                    key: String::new(),
                    message: error_chain(&err),
                })?;
        if let Some(unknown) = resolved.unrecognized.first() {
            return Err(ArtiConfigError {
                key: unknown.to_string(),
                message:
                    "not a key of Arti's client configuration (see Arti's arti.toml reference)"
                        .into(),
            });
        }
        Ok(ArtiSettings {
            client_config: resolved.value,
        })
    }

    pub(super) fn client_config(&self) -> &TorClientConfig {
        &self.client_config
    }
}

/// Our defaults for Arti, applied below the operator's `[arti]` table (see the module docs).
fn balancer_defaults(state_dir: &Path) -> String {
    let mut storage = toml::Table::new();
    for (key, subdir) in [
        ("state_dir", params::ARTI_STATE_SUBDIR),
        ("cache_dir", params::ARTI_CACHE_SUBDIR),
    ] {
        storage.insert(
            key.into(),
            toml::Value::String(state_dir.join(subdir).to_string_lossy().into_owned()),
        );
    }
    let mut preemptive = toml::Table::new();
    preemptive.insert(
        "initial_predicted_ports".into(),
        toml::Value::Array(Vec::new()),
    );
    let mut root = toml::Table::new();
    root.insert("storage".into(), toml::Value::Table(storage));
    root.insert("preemptive_circuits".into(), toml::Value::Table(preemptive));
    root.to_string()
}

/// An error and all its causes on one line: Arti's top-level messages ("Config contents not
/// as expected") only make sense with what lies beneath them.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    crate::config::one_line(&message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tor_linkspec::HasAddrs;

    fn resolve(text: &str) -> Result<ArtiSettings, ArtiConfigError> {
        let table: toml::Table = toml::from_str(text).unwrap();
        ArtiSettings::from_table(&table, Path::new("/var/lib/rustbalance"))
    }

    #[test]
    fn storage_defaults_to_the_state_dir() {
        let settings = resolve("").unwrap();
        let dirmgr = settings.client_config.dir_mgr_config().unwrap();
        assert_eq!(
            dirmgr.cache_dir,
            Path::new("/var/lib/rustbalance/arti/cache")
        );
    }

    #[test]
    fn storage_can_be_overridden() {
        let settings = resolve("[storage]\ncache_dir = \"/srv/cache\"\n").unwrap();
        let dirmgr = settings.client_config.dir_mgr_config().unwrap();
        assert_eq!(dirmgr.cache_dir, Path::new("/srv/cache"));
    }

    /// A private network's lists must *replace* Arti's built-in public authorities and
    /// fallbacks: any public entry left over would make Arti dial the public network.
    #[test]
    fn private_network_lists_replace_the_public_ones() {
        let settings = resolve(
            r#"
            [tor_network]
            fallback_caches = [
              { rsa_identity = "0123456789ABCDEF0123456789ABCDEF01234567", ed_identity = "nPQWi7u6Vm5VHj6IeGKZIxlzKtK0CRpFm9Fz4U1/4Oc", orports = ["127.0.0.1:5001"] },
              { rsa_identity = "1123456789ABCDEF0123456789ABCDEF01234567", ed_identity = "mPQWi7u6Vm5VHj6IeGKZIxlzKtK0CRpFm9Fz4U1/4Oc", orports = ["127.0.0.1:5002"] },
            ]
            [tor_network.authorities]
            v3idents = ["2123456789ABCDEF0123456789ABCDEF01234567"]
            [path_rules]
            ipv4_subnet_family_prefix = 33
            ipv6_subnet_family_prefix = 129
            [override_net_params]
            hsdir_interval = 8
            "#,
        )
        .unwrap();
        let network = settings.client_config.dir_mgr_config().unwrap().network;
        let fallbacks: Vec<_> = network.fallback_caches().iter().collect();
        assert_eq!(fallbacks.len(), 2);
        for fallback in fallbacks {
            assert!(fallback.addrs().all(|addr| addr.ip().is_loopback()));
        }
        assert_eq!(network.authorities().v3idents().len(), 1);
    }

    #[test]
    fn unknown_keys_are_errors_with_their_path() {
        let err = resolve("[tor_network]\nfallback_cache = []\n").unwrap_err();
        assert_eq!(err.key, "tor_network.fallback_cache");
    }

    #[test]
    fn program_sections_are_refused() {
        let err = resolve("[proxy]\nsocks_listen = 9150\n").unwrap_err();
        assert_eq!(err.key, "proxy");
    }

    #[test]
    fn authorities_without_fallbacks_are_refused_by_arti() {
        let err = resolve(
            "[tor_network.authorities]\nv3idents = [\"2123456789ABCDEF0123456789ABCDEF01234567\"]\n",
        )
        .unwrap_err();
        assert!(err.message.contains("fallback"), "{}", err.message);
    }
}
