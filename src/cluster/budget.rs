//! The cluster's [`Budget`]: sends and connections counted in Redis for all nodes, with
//! this node's [`Ledger`] of its own sends beside, for when Redis cannot count them.

use std::sync::Arc;

use tokio::time::Instant;

use super::ledger::{InRedis, Send, Share};
use super::{
    Cluster, IN_FLIGHT_MS, Inner, LEASE_TTL_MS, MINUTE_MS, Mode, POLL_MS, UNSHARED_WAIT, new_epoch,
};
use crate::delivery::budget::{
    self, BoxFuture, Budget, Channel, Exhausted, Grant, Limits, Usage, Window,
};

/// No share to send within while Redis cannot count: look again in a moment.
fn unshared() -> Exhausted {
    Exhausted {
        window: Window::Unshared,
        until: Instant::now() + UNSHARED_WAIT,
    }
}

/// What the take script answered.
enum Taken {
    Granted {
        now: u64,
        bucket: String,
    },
    Refused {
        window: Window,
        until: u64,
        now: u64,
    },
    /// Redis holds another data set than this node counted in.
    OtherEpoch(String),
    /// Run after this node stopped waiting for it: counted nothing.
    Late,
}

impl Taken {
    fn parse(reply: &[String]) -> Option<Taken> {
        let number = |i: usize| reply.get(i)?.parse::<u64>().ok();
        Some(match reply.first()?.as_str() {
            "ok" => Taken::Granted {
                now: number(1)?,
                bucket: reply.get(2)?.clone(),
            },
            "rate" => Taken::Refused {
                window: Window::Rate,
                until: number(1)?,
                now: number(2)?,
            },
            "daily" => Taken::Refused {
                window: Window::Daily,
                until: number(1)?,
                now: number(2)?,
            },
            "epoch" => Taken::OtherEpoch(reply.get(1)?.clone()),
            "late" => Taken::Late,
            _ => return None,
        })
    }
}

impl Inner {
    fn budget_keys<'a, 's>(
        &self,
        invocation: &'a mut redis::ScriptInvocation<'s>,
        mailbox: &str,
    ) -> &'a mut redis::ScriptInvocation<'s> {
        invocation
            .key(self.key("rate", mailbox))
            .key(self.key("daily", mailbox))
            .key(self.key("minutes", mailbox))
            .key(self.shared_key("epoch"))
    }

    /// Counts the send in Redis; `None` when Redis cannot (unreachable, or a new data set).
    async fn take_in_redis(
        self: &Arc<Self>,
        mailbox: &str,
        limits: Limits,
        recipients: u64,
    ) -> Option<Result<Grant, Exhausted>> {
        let member = self.fresh_id();
        let epoch = self.state().epoch.clone();
        let period_ms = limits.rate.period.as_millis() as u64;
        let (rate, daily) = self.limits_in_redis(limits);
        let mut invocation = self.scripts.take.prepare_invoke();
        self.budget_keys(&mut invocation, mailbox)
            .arg(epoch)
            .arg(new_epoch())
            .arg(period_ms)
            .arg(rate)
            .arg(daily)
            .arg(recipients)
            .arg(&member)
            .arg(IN_FLIGHT_MS)
            .arg(POLL_MS)
            .arg(self.deadline());
        let reply: Vec<String> = self.call(&invocation).await.ok()?;
        match Taken::parse(&reply) {
            Some(Taken::Granted { now, bucket }) => {
                self.note_redis_time(now);
                let number = self.state().ledger.record(
                    mailbox,
                    member,
                    now + IN_FLIGHT_MS,
                    (recipients, period_ms),
                    InRedis::Taken { bucket },
                );
                Some(Ok(self.send_grant(mailbox, number)))
            }
            Some(Taken::Refused { window, until, now }) => {
                self.note_redis_time(now);
                Some(Err(Exhausted {
                    window,
                    until: self.instant_at(until),
                }))
            }
            Some(Taken::OtherEpoch(epoch)) => {
                self.adopt_epoch(&epoch);
                None
            }
            Some(Taken::Late) => None,
            None => {
                tracing::error!(?reply, "cluster: the take script answered nonsense");
                None
            }
        }
    }

    /// What the nodes that reach Redis count against there: the limits less the shares of
    /// nodes not heard from, which may be sending within them on their own.
    fn limits_in_redis(&self, limits: Limits) -> (u64, u64) {
        let (rate, daily) = (
            u64::from(limits.rate.count),
            u64::from(limits.daily_recipients),
        );
        let silent = u64::from(self.silent_nodes());
        match self.config.nodes {
            Some(nodes) if silent > 0 => {
                let nodes = u64::from(nodes);
                (
                    rate - silent * (rate / nodes),
                    daily - silent * (daily / nodes),
                )
            }
            _ => (rate, daily),
        }
    }

    /// This node's share of a mailbox's limits: `Err` when it has none (sending waits).
    fn share(&self, limits: Limits) -> Result<Share, Exhausted> {
        let nodes = u64::from(self.config.nodes.ok_or_else(unshared)?);
        let share = Share {
            rate: u64::from(limits.rate.count) / nodes,
            period_ms: limits.rate.period.as_millis() as u64,
            daily: u64::from(limits.daily_recipients) / nodes,
        };
        if share.rate == 0 || share.daily == 0 {
            return Err(unshared());
        }
        Ok(share)
    }

    /// Whether the send fits this node's share now.
    fn share_room(&self, mailbox: &str, limits: Limits, recipients: u64) -> Result<(), Exhausted> {
        let share = self.share(limits)?;
        if let Some(until) = self.handover_until() {
            return Err(Exhausted {
                window: Window::Handover,
                until,
            });
        }
        let now = self.cluster_now();
        let room = self
            .state()
            .ledger
            .room(mailbox, share, recipients, now, POLL_MS);
        room.map_err(|(window, until)| Exhausted {
            window,
            until: self.instant_at(until),
        })
    }

    /// Counts the send against this node's share of the budgets alone.
    async fn take_from_share(
        self: &Arc<Self>,
        mailbox: &str,
        limits: Limits,
        recipients: u64,
    ) -> Result<Grant, Exhausted> {
        let _one_at_a_time = self.share_check.lock().await;
        self.share_room(mailbox, limits, recipients)?;
        let (member, due) = (self.fresh_id(), self.cluster_now() + IN_FLIGHT_MS);
        let period_ms = limits.rate.period.as_millis() as u64;
        let number =
            self.state()
                .ledger
                .record(mailbox, member, due, (recipients, period_ms), InRedis::No);
        // Only this node knows of it: on disk before it starts, in case of a restart.
        self.save_ledger().await;
        Ok(self.send_grant(mailbox, number))
    }

    /// Back from an outage: counts the send in Redis and within this node's share both.
    async fn take_settling(
        self: &Arc<Self>,
        mailbox: &str,
        limits: Limits,
        recipients: u64,
    ) -> Result<Grant, Exhausted> {
        {
            let _one_at_a_time = self.share_check.lock().await;
            self.share_room(mailbox, limits, recipients)?;
            if let Some(taken) = self.take_in_redis(mailbox, limits, recipients).await {
                return taken;
            }
        }
        self.take_from_share(mailbox, limits, recipients).await
    }

    /// The grant of a counted send: its drop notes the finish here and then in Redis; giving
    /// it back forgets the send here and takes it back in Redis.
    fn send_grant(self: &Arc<Self>, mailbox: &str, number: u64) -> Grant {
        let (inner, undo) = (Arc::clone(self), Arc::clone(self));
        let (mailbox, mailbox_to_undo) = (mailbox.to_owned(), mailbox.to_owned());
        let give_back = move || {
            let Some(send) = undo.state().ledger.give_back(&mailbox_to_undo, number) else {
                return;
            };
            if let InRedis::Taken { bucket } = &send.in_redis {
                let bucket = bucket.clone();
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        undo.give_back_in_redis(&mailbox_to_undo, send, &bucket)
                            .await;
                    });
                }
            }
        };
        let finish = move || {
            let now = inner.cluster_now();
            let Some(send) = inner.state().ledger.finish(&mailbox, number, now) else {
                return;
            };
            if let InRedis::Taken { .. } = &send.in_redis {
                // Dropped where no runtime runs (at exit): Redis keeps the send in flight,
                // which counts it for longer, never shorter.
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move { inner.finish_in_redis(&mailbox, &send).await });
                }
            }
        };
        Grant::undoable(finish, give_back)
    }

    /// Takes back in Redis a send counted in `bucket` that never reached the upstream; owed
    /// (told at the next heartbeat) while Redis cannot hear it.
    async fn give_back_in_redis(&self, mailbox: &str, send: Send, bucket: &str) {
        let epoch = self.state().epoch.clone();
        let mut invocation = self.scripts.give_back.prepare_invoke();
        self.budget_keys(&mut invocation, mailbox)
            .arg(epoch)
            .arg(&send.member)
            .arg(send.recipients)
            .arg(bucket);
        // Under another epoch the send is gone with the data set that had it.
        if self.call::<Option<i64>>(&invocation).await.is_err() {
            let owed = Send {
                in_redis: InRedis::Taken {
                    bucket: bucket.to_owned(),
                },
                ..send
            };
            self.state().ledger.owe_give_back(mailbox, owed);
        }
    }

    /// Tells Redis a send counted in flight has finished (now, or late after an outage).
    async fn finish_in_redis(&self, mailbox: &str, send: &Send) {
        let (InRedis::Taken { bucket } | InRedis::FinishOwed { bucket }) = &send.in_redis else {
            return;
        };
        let epoch = self.state().epoch.clone();
        let mut invocation = self.scripts.finish.prepare_invoke();
        self.budget_keys(&mut invocation, mailbox)
            .arg(epoch)
            .arg(&send.member)
            .arg(send.recipients)
            .arg(bucket);
        let now = match self.call::<Option<String>>(&invocation).await {
            Ok(Some(_)) => InRedis::Finished,
            // Another data set: the send is owed to it in full already.
            Ok(None) => return,
            Err(_) => InRedis::FinishOwed {
                bucket: bucket.clone(),
            },
        };
        self.state()
            .ledger
            .set_in_redis(mailbox, send.number, &send.in_redis, now);
    }

    /// Puts into Redis what this node sent while Redis could not count it, and the finishes
    /// it could not hear.
    pub(super) async fn pay_back(&self) {
        let (epoch, owed, finishes, give_backs) = {
            let mut state = self.state();
            (
                state.epoch.clone(),
                state.ledger.owed(),
                state.ledger.finishes_owed(),
                state.ledger.take_give_backs_owed(),
            )
        };
        for (mailbox, send) in give_backs {
            if let InRedis::Taken { bucket } = send.in_redis.clone() {
                self.give_back_in_redis(&mailbox, send, &bucket).await;
            }
        }
        for (mailbox, sends) in owed {
            for batch in sends.chunks(500) {
                let mut invocation = self.scripts.push.prepare_invoke();
                self.budget_keys(&mut invocation, &mailbox).arg(&epoch);
                for send in batch {
                    invocation
                        .arg(&send.member)
                        .arg(send.at)
                        .arg(send.recipients)
                        .arg(send.period_ms);
                }
                match self.call::<i64>(&invocation).await {
                    Ok(n) if n >= 0 => {
                        let mut finished_meanwhile = Vec::new();
                        let mut given_back_meanwhile = Vec::new();
                        {
                            let mut state = self.state();
                            for send in batch {
                                // Given back while the push ran: Redis takes it back now.
                                if state.ledger.get(&mailbox, send.number).is_none() {
                                    given_back_meanwhile.push(send.clone());
                                    continue;
                                }
                                // Pushed in flight: its finish moves it, as for any take.
                                let now = match send.in_flight {
                                    true => InRedis::Taken {
                                        bucket: (send.at / MINUTE_MS).to_string(),
                                    },
                                    false => InRedis::Finished,
                                };
                                let ledger = &mut state.ledger;
                                ledger.set_in_redis(&mailbox, send.number, &InRedis::No, now);
                                // It finished while the push ran: Redis hears of it now.
                                if let Some(current) = ledger.get(&mailbox, send.number)
                                    && send.in_flight
                                    && !current.in_flight
                                {
                                    finished_meanwhile.push(current);
                                }
                            }
                        }
                        for send in finished_meanwhile {
                            self.finish_in_redis(&mailbox, &send).await;
                        }
                        for send in given_back_meanwhile {
                            let bucket = (send.at / MINUTE_MS).to_string();
                            self.give_back_in_redis(&mailbox, send, &bucket).await;
                        }
                    }
                    // Another data set, or unreachable: the next heartbeat tries again.
                    _ => return,
                }
            }
        }
        for (mailbox, send) in finishes {
            self.finish_in_redis(&mailbox, &send).await;
        }
    }

    /// Takes a connection: this node's count, and the cluster's lease while Redis counts.
    async fn connect(
        self: &Arc<Self>,
        mailbox: &str,
        channel: Channel,
        limit: u32,
    ) -> Result<Grant, Exhausted> {
        let id = self.fresh_id();
        let key = self.key(&format!("conn:{}", channel.name()), mailbox);
        if self.reachable() {
            let local = self.connections.take(mailbox, channel, limit)?;
            match self.lease_in_redis(&key, &id, limit).await {
                Some(Ok(())) => return Ok(self.connection_grant(local, id, key)),
                Some(Err(full)) => {
                    drop(local);
                    // Connections this node holds can take the message now: only the
                    // worker that asked waits (see `worker`), not the mailbox.
                    let until = match self.connections.open(mailbox, channel) {
                        0 => full.until,
                        _ => Instant::now(),
                    };
                    return Err(Exhausted { until, ..full });
                }
                // Unreachable just now, or answered too late to count: the share decides.
                None => drop(local),
            }
        }
        let share = self.config.nodes.map_or(0, |nodes| limit / nodes);
        if share == 0 {
            return Err(unshared());
        }
        let local = self.connections.take(mailbox, channel, share)?;
        Ok(self.connection_grant(local, id, key))
    }

    /// The lease in Redis; `None` when Redis cannot say.
    async fn lease_in_redis(
        &self,
        key: &str,
        id: &str,
        limit: u32,
    ) -> Option<Result<(), Exhausted>> {
        let mut invocation = self.scripts.lease.prepare_invoke();
        invocation
            .key(key)
            .arg(id)
            .arg(limit)
            .arg(LEASE_TTL_MS)
            .arg(POLL_MS)
            .arg(self.deadline());
        let reply = self.call::<Vec<String>>(&invocation).await.ok()?;
        match reply.first().map(String::as_str) {
            Some("ok") => Some(Ok(())),
            Some("full") => {
                let until = reply.get(1).and_then(|t| t.parse().ok())?;
                Some(Err(Exhausted {
                    window: Window::Connections,
                    until: self.instant_at(until),
                }))
            }
            _ => None,
        }
    }

    /// A connection's grant: renewed in Redis while held (one taken while Redis could not
    /// count it is put there by the first renewal after Redis answers), released on drop.
    fn connection_grant(self: &Arc<Self>, local: Grant, id: String, key: String) -> Grant {
        self.state().leases.insert(id.clone(), key.clone());
        let inner = Arc::clone(self);
        Grant::new(move || {
            drop(local);
            inner.state().leases.remove(&id);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { inner.release(&key, &id).await });
            }
        })
    }

    async fn release(&self, key: &str, id: &str) {
        let mut connection = self.redis.clone();
        let zrem = redis::cmd("ZREM").arg(key).arg(id).clone();
        // Unanswered, the lease runs out by itself within LEASE_TTL_MS: no need to say
        // Redis is unreachable.
        let _ = self
            .within_timeout(zrem.query_async::<i64>(&mut connection))
            .await;
    }

    /// Keeps this node's leases alive.
    pub(super) async fn renew(&self) {
        let leases: Vec<(String, String)> = self
            .state()
            .leases
            .iter()
            .map(|(id, key)| (id.clone(), key.clone()))
            .collect();
        if leases.is_empty() || !self.reachable() {
            return;
        }
        let mut invocation = self.scripts.renew.prepare_invoke();
        invocation.arg(LEASE_TTL_MS);
        for (id, key) in &leases {
            invocation.key(key).arg(id);
        }
        let _ = self.call::<i64>(&invocation).await;
    }

    async fn usage(&self, mailbox: &str, limits: Limits) -> Usage {
        let period_ms = limits.rate.period.as_millis() as u64;
        if self.reachable() {
            let (rate, daily) = self.limits_in_redis(limits);
            let mut invocation = self.scripts.usage.prepare_invoke();
            invocation
                .key(self.key("rate", mailbox))
                .key(self.key("daily", mailbox))
                .key(self.key("minutes", mailbox))
                .arg(period_ms)
                .arg(rate)
                .arg(daily);
            if let Ok((sent, recipients_today, next)) =
                self.call::<(u64, u64, u64)>(&invocation).await
            {
                return Usage {
                    sent,
                    recipients_today,
                    next_send: (next > 0).then(|| self.instant_at(next)),
                };
            }
        }
        // What this node knows: its own sends, against its share.
        let now = self.cluster_now();
        let next_send = match self.share(limits) {
            Ok(share) => {
                let room = self.state().ledger.room(mailbox, share, 1, now, POLL_MS);
                room.err().map(|(_, until)| self.instant_at(until))
            }
            Err(unshared) => Some(unshared.until),
        };
        let (sent, recipients_today) = self.state().ledger.usage(mailbox, period_ms, now);
        Usage {
            sent,
            recipients_today,
            next_send,
        }
    }
}

impl Budget for Cluster {
    fn take<'a>(
        &'a self,
        mailbox: &'a str,
        limits: Limits,
        recipients: u64,
    ) -> BoxFuture<'a, Result<Grant, Exhausted>> {
        Box::pin(async move {
            let inner = &self.inner;
            let mailbox = budget::key(mailbox);
            match inner.mode() {
                Mode::Shared => match inner.take_in_redis(&mailbox, limits, recipients).await {
                    Some(taken) => taken,
                    None => inner.take_from_share(&mailbox, limits, recipients).await,
                },
                Mode::Settling => inner.take_settling(&mailbox, limits, recipients).await,
                Mode::OwnShare | Mode::Paused => {
                    inner.take_from_share(&mailbox, limits, recipients).await
                }
            }
        })
    }

    fn usage<'a>(&'a self, mailbox: &'a str, limits: Limits) -> BoxFuture<'a, Usage> {
        Box::pin(async move { self.inner.usage(&budget::key(mailbox), limits).await })
    }

    /// Other nodes may be waiting for the connection: an idle one goes back after a
    /// moment (long enough for a burst to reuse it).
    fn keep_idle(&self) -> std::time::Duration {
        super::KEEP_IDLE
    }

    fn connect<'a>(
        &'a self,
        mailbox: &'a str,
        channel: Channel,
        limit: u32,
    ) -> BoxFuture<'a, Result<Grant, Exhausted>> {
        Box::pin(async move {
            self.inner
                .connect(&budget::key(mailbox), channel, limit)
                .await
        })
    }
}
