//! Who sends which command in W1: disjoint orders per task, or (contended) every task
//! rotating over the same 16 orders; and what every `order_summary` row must hold after.

use super::workload::{LINES_PER_ORDER, line};

/// The orders every task writes to in the contended variant.
pub const CONTENDED_ORDERS: u64 = 16;

/// One command of the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Place order `n`.
    Place(u64),
    /// Add line `k` (see [`line`]) to order `n`.
    Line(u64, u64),
}

/// The shape of a run.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Orders in the workload.
    pub orders: u64,
    /// Client tasks.
    pub tasks: usize,
    /// Whether all tasks write to the same 16 orders.
    pub contended: bool,
    /// How the commands' events are encoded.
    pub codec: strata::Codec,
    /// The number of the run's first order: 0 on a fresh store, past every order of the
    /// earlier runs on a store kept with `--keep`, so that each run places new orders.
    pub first_order: u64,
}

impl Plan {
    /// Lines each task sends in the contended variant: 16 per 1,000 orders (16 at 1,000,
    /// 160 at 10,000), at least 1.
    fn contended_lines_per_task(&self) -> u64 {
        (self.orders * 16 / 1000).max(1)
    }

    /// Steps that must finish before the tasks start (the contended orders are placed first).
    pub fn setup(&self) -> Vec<Step> {
        if self.contended { self.orders().map(Step::Place).collect() } else { Vec::new() }
    }

    /// The steps of task `task`, in the order it sends them. Generated as they are sent, so
    /// that a run of ten million commands does not hold ten million steps in memory.
    pub fn task(&self, task: usize) -> Box<dyn Iterator<Item = Step> + Send> {
        let (task, first) = (task as u64, self.first_order);
        if self.contended {
            let lines = self.contended_lines_per_task();
            Box::new((0..lines).map(move |i| Step::Line(first + (task + i) % CONTENDED_ORDERS, 0)))
        } else {
            Box::new((first + task..first + self.orders).step_by(self.tasks).flat_map(|n| {
                std::iter::once(Step::Place(n))
                    .chain((0..LINES_PER_ORDER).map(move |k| Step::Line(n, k)))
            }))
        }
    }

    /// Every command of the run.
    pub fn total_commands(&self) -> u64 {
        if self.contended {
            CONTENDED_ORDERS + self.tasks as u64 * self.contended_lines_per_task()
        } else {
            self.orders * (1 + LINES_PER_ORDER)
        }
    }

    /// The numbers of the orders the run places.
    pub fn orders(&self) -> std::ops::Range<u64> {
        let count = if self.contended { CONTENDED_ORDERS } else { self.orders };
        self.first_order..self.first_order + count
    }

    /// The first order number a later run on the same store may use.
    pub fn next_order(&self) -> u64 {
        self.orders().end
    }

    /// What `order_summary` must hold for order `n` (one of [`Plan::orders`]): its lines
    /// and their total.
    pub fn expected(&self, n: u64) -> (u64, i64) {
        let lines: Vec<u64> = if self.contended {
            let n = n - self.first_order;
            let per_task = self.contended_lines_per_task();
            let count = (0..self.tasks as u64)
                .map(|task| (0..per_task).filter(|i| (task + i) % CONTENDED_ORDERS == n).count())
                .sum::<usize>();
            vec![0; count]
        } else {
            (0..LINES_PER_ORDER).collect()
        };
        let total = lines.iter().map(|&k| line(k)).map(|(_, qty, price)| qty * price).sum();
        (lines.len() as u64, total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disjoint_tasks_cover_every_order_once_with_nine_lines() {
        let plan = Plan {
            orders: 100,
            tasks: 7,
            contended: false,
            codec: strata::Codec::Json,
            first_order: 0,
        };
        assert_eq!(plan.total_commands(), 1000);
        let sent: usize = (0..7).map(|t| plan.task(t).count()).sum();
        assert_eq!(sent, 1000, "the tasks send every command once");
        let placed: std::collections::BTreeSet<u64> = (0..7)
            .flat_map(|t| plan.task(t))
            .filter_map(|s| if let Step::Place(n) = s { Some(n) } else { None })
            .collect();
        assert_eq!(placed, plan.orders().collect());
        assert!(plan.orders().all(|n| plan.expected(n).0 == LINES_PER_ORDER));
    }

    #[test]
    fn contended_tasks_rotate_over_sixteen_orders() {
        let plan = Plan {
            orders: 10_000,
            tasks: 64,
            contended: true,
            codec: strata::Codec::Json,
            first_order: 0,
        };
        assert_eq!(plan.total_commands(), 16 + 64 * 160);
        assert_eq!(plan.orders().count(), 16);
        assert!(plan.orders().all(|n| plan.expected(n) == (640, 640 * 100)));
    }

    #[test]
    fn a_later_run_places_only_orders_of_its_own() {
        for contended in [false, true] {
            let earlier = Plan {
                orders: 100,
                tasks: 7,
                contended,
                codec: strata::Codec::Json,
                first_order: 0,
            };
            let later = Plan { first_order: earlier.next_order(), ..earlier };
            let touched = |plan: &Plan| -> std::collections::BTreeSet<u64> {
                plan.setup()
                    .into_iter()
                    .chain((0..plan.tasks).flat_map(|t| plan.task(t)))
                    .map(|step| match step {
                        Step::Place(n) | Step::Line(n, _) => n,
                    })
                    .collect()
            };
            assert_eq!(touched(&earlier), earlier.orders().collect());
            assert_eq!(touched(&later), later.orders().collect());
            assert!(touched(&earlier).is_disjoint(&touched(&later)));
            assert!(later.orders().all(|n| plan_expected_matches(&earlier, &later, n)));
        }
    }

    /// A later run expects of its orders what the first run expected of the same slot.
    fn plan_expected_matches(earlier: &Plan, later: &Plan, n: u64) -> bool {
        later.expected(n) == earlier.expected(n - later.first_order)
    }
}
