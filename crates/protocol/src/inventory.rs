//! What software a package-based machine has: installed packages from dpkg, and the upgrades
//! apt would make, with security updates marked (docs/PROTOCOL.md, "Inventory").

use serde::{Deserialize, Serialize};

/// One installed package (`dpkg-query -W`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub arch: String,
}

/// One upgrade apt would make (`apt-get -s dist-upgrade`: `Inst NAME [OLD] (NEW ORIGINS [ARCH])`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Upgrade {
    pub name: String,
    pub from: String,
    pub to: String,
    /// The origins apt names for the new version, as it prints them (`Debian:12.5/stable, ...`).
    pub origin: String,
    /// The new version comes from a `-security` suite.
    pub security: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Inventory {
    pub packages: Vec<Package>,
    pub upgradable: Vec<Upgrade>,
    /// Unix seconds when it was read on the machine.
    pub collected_at: i64,
}

impl Inventory {
    /// BLAKE3 of the packages and upgrades (not of the time): the server answers the digest of
    /// what it holds, and the agent sends the whole inventory only when that differs.
    pub fn digest(&self) -> String {
        let v = serde_json::to_vec(&(&self.packages, &self.upgradable)).expect("serialises");
        blake3::hash(&v).to_hex().to_string()
    }

    pub fn security_updates(&self) -> usize {
        self.upgradable.iter().filter(|u| u.security).count()
    }
}

/// A machine with pending updates (`GET /api/v1/admin/outdated`).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Outdated {
    pub machine: String,
    pub upgradable: usize,
    pub security: usize,
    pub packages: Vec<Upgrade>,
    pub collected_at: i64,
}
