//! `zos key new|show`: the user's identity.

use std::path::PathBuf;

use clap::Subcommand;
use zos_client::{KeyFile, config};
use zos_types::KeyType;

/// Key management.
#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Create a new key file (mode 0600).
    New {
        /// Where to write it (default: the config directory's key.json).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Derive it from fresh BIP-39 words (printed once; write them down).
        #[arg(long)]
        mnemonic: bool,
        /// Restore from existing words instead of generating.
        #[arg(long, value_name = "WORDS", conflicts_with = "mnemonic")]
        from_mnemonic: Option<String>,
        /// Use sr25519 (Substrate wallets) instead of ed25519.
        #[arg(long)]
        sr25519: bool,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Show the public key of a key file.
    Show {
        /// The key file (default: from the configuration, else the config directory's key.json).
        #[arg(long, env = "ZOS_KEY")]
        file: Option<PathBuf>,
    },
}

/// The default key file path.
pub fn default_key_path() -> PathBuf {
    config::config_dir().join("key.json")
}

/// Runs a key subcommand.
pub fn run(cmd: KeyCmd) -> anyhow::Result<()> {
    match cmd {
        KeyCmd::New {
            file,
            mnemonic,
            from_mnemonic,
            sr25519,
            force,
        } => {
            let kt = if sr25519 {
                KeyType::Sr25519
            } else {
                KeyType::Ed25519
            };
            let kf = match from_mnemonic {
                Some(words) => KeyFile::from_mnemonic(kt, &words)?,
                None => KeyFile::generate(kt, mnemonic),
            };
            let path = file.unwrap_or_else(default_key_path);
            kf.save(&path, force)?;
            let public = kf.key_pair().map_err(anyhow::Error::msg)?.public();
            println!("key:    {}", path.display());
            println!("public: {public}");
            if mnemonic {
                println!("words:  {}", kf.mnemonic.as_deref().unwrap_or(""));
                println!(
                    "        (shown once: they restore this key with `zos key new --from-mnemonic`)"
                );
            }
        }
        KeyCmd::Show { file } => {
            let path = match file {
                Some(p) => p,
                None => zos_client::Config::load(&config::default_path())?
                    .key
                    .unwrap_or_else(default_key_path),
            };
            let kf = match KeyFile::load(&path) {
                Err(zos_client::KeyFileError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    anyhow::bail!(
                        "no key at {}: run `zos key new` to create one",
                        path.display()
                    )
                }
                other => other?,
            };
            let public = kf.key_pair().map_err(anyhow::Error::msg)?.public();
            println!("key:    {}", path.display());
            println!("public: {public}");
        }
    }
    Ok(())
}
