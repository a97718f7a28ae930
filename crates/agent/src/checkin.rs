//! The exchange with the server: enrolling, and the check-in that reports the state and takes
//! what to run (the desired release, jobs, template variables, placement).

use semithin_protocol::api::{CheckInRequest, CheckInResponse, EnrollRequest};
use semithin_protocol::sign::MachineKey;

use crate::{Agent, Error, Result, hostname, write_private};

impl Agent {
    /// Reports the state and asks what to run, holding up to `wait` seconds when nothing is new.
    pub fn checkin(&mut self, wait: u32) -> Result<&CheckInResponse> {
        let facts = self.facts_to_send();
        let req = CheckInRequest {
            report: self.report()?,
            // New facts may render the templates differently: the answer is not held, so the
            // rendering follows at once (a push after a fact changed is enough).
            wait_secs: if facts.is_some() { 0 } else { wait },
            accepts_jobs: true,
            job_results: self.jobs.store.unreported()?,
            inventory: self.jobs.inventory_to_send(),
            accepts_vars: true,
            facts,
            bad_upstreams: self.failover.pending(),
        };
        let resp = self.api().checkin(&req)?;
        self.failover.reported(req.bad_upstreams.len());
        if self.cfg.follow_placement && self.failover.place(&resp.upstreams) {
            self.connect()?;
            self.say(&format!(
                "placed by the server: using {}",
                self.api().base()
            ));
        }
        self.facts_digest = resp.facts_digest.clone();
        // The server has the results and the inventory once it answered.
        let sent: Vec<String> = req
            .job_results
            .iter()
            .map(|r| r.delivery.to_string())
            .collect();
        self.jobs.store.mark_reported(&sent)?;
        self.jobs.server_digest = resp.inventory_digest.clone();
        self.jobs.pending = resp.jobs.clone();
        let mut resp = resp;
        let refused = match resp.desired.as_ref() {
            Some(d) => self.check_channel(&d.channel, &d.metadata_path)?,
            None => None,
        };
        if refused.is_some() {
            // Nothing of a release on a channel this machine does not follow is acted on.
            resp.desired = None;
        }
        if let Some(b) = resp.vars.take() {
            self.take_vars(&b, resp.desired.as_ref().map(|d| d.channel.as_str()))?;
        }
        if self.state.status != Some(resp.status) {
            self.say(&format!(
                "server says this machine is {}",
                resp.status.as_str()
            ));
            self.state.status = Some(resp.status);
            self.save()?;
        }
        if resp.desired.as_ref().map(|d| &d.release)
            != self
                .answer
                .as_ref()
                .and_then(|a| a.desired.as_ref())
                .map(|d| &d.release)
        {
            self.verified = None;
            self.missing = None;
        }
        let told = resp.desired.as_ref().map(|d| d.release.to_string());
        if told != self.told {
            self.told = told;
            self.rechecked = None;
        }
        let waiting = resp.desired.as_ref().and_then(|d| d.waiting.clone());
        if waiting != self.state.waiting {
            if let Some(w) = &waiting {
                self.say(&format!("waiting: {w}"));
            }
            self.state.waiting = waiting;
            self.save()?;
        }
        self.answer = Some(resp);
        if let Some(reason) = refused {
            return Err(Error::Channel(reason));
        }
        Ok(self.answer.as_ref().expect("just set"))
    }

    pub(crate) fn enroll(&mut self) -> Result<()> {
        let key_path = self.layout.key();
        if !key_path.exists() {
            let key = MachineKey::generate()?;
            write_private(&key_path, key.file_text().as_bytes())?;
            self.say(&format!("made machine key {}", key.id()));
        }
        self.connect()?;
        self.init_trust()?;
        let name = match &self.cfg.name {
            Some(n) => n.clone(),
            None => hostname(),
        };
        let token = self.cfg.token.clone().ok_or_else(|| {
            Error::Config("not enrolled yet: give an enrollment token (--token)".into())
        })?;
        let req = EnrollRequest {
            token,
            name: name.clone(),
            public_key: hex::encode(self.api().key().public()),
            labels: self.cfg.labels.clone(),
        };
        let resp = self.api().enroll(&req)?;
        self.say(&format!(
            "enrolled as {name} ({}): {}",
            resp.machine_id,
            resp.status.as_str()
        ));
        self.state.machine_id = Some(resp.machine_id.to_string());
        self.state.name = Some(name);
        self.state.server = Some(self.api().base().to_owned());
        self.state.status = Some(resp.status);
        self.save()
    }
}
