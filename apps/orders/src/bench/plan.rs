//! Who sends which command in W1: disjoint orders per task, or (contended) every task
//! rotating over the same 16 orders; and what every `order_summary` row must hold after.

use std::collections::BTreeMap;

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
}

impl Plan {
    /// Lines each task sends in the contended variant: 16 per 1,000 orders (16 at 1,000,
    /// 160 at 10,000), at least 1.
    fn contended_lines_per_task(&self) -> u64 {
        (self.orders * 16 / 1000).max(1)
    }

    /// Steps that must finish before the tasks start (the contended orders are placed first).
    pub fn setup(&self) -> Vec<Step> {
        if self.contended { (0..CONTENDED_ORDERS).map(Step::Place).collect() } else { Vec::new() }
    }

    /// The steps of task `task`, in the order it sends them.
    pub fn task(&self, task: usize) -> Vec<Step> {
        let tasks = self.tasks as u64;
        let task = task as u64;
        if self.contended {
            (0..self.contended_lines_per_task())
                .map(|i| Step::Line((task + i) % CONTENDED_ORDERS, 0))
                .collect()
        } else {
            (task..self.orders)
                .step_by(self.tasks)
                .filter(|_| tasks > 0)
                .flat_map(|n| {
                    std::iter::once(Step::Place(n))
                        .chain((0..LINES_PER_ORDER).map(move |k| Step::Line(n, k)))
                })
                .collect()
        }
    }

    /// Every command of the run.
    pub fn total_commands(&self) -> u64 {
        let per_task: u64 = (0..self.tasks).map(|t| self.task(t).len() as u64).sum();
        self.setup().len() as u64 + per_task
    }

    /// What `order_summary` must hold per order: lines and total, by order number.
    pub fn expected(&self) -> BTreeMap<u64, (u64, i64)> {
        let mut expected = BTreeMap::new();
        let steps = self.setup().into_iter().chain((0..self.tasks).flat_map(|t| self.task(t)));
        for step in steps {
            match step {
                Step::Place(n) => {
                    expected.entry(n).or_insert((0, 0));
                }
                Step::Line(n, k) => {
                    let (_, qty, price) = line(k);
                    let entry = expected.entry(n).or_insert((0, 0));
                    entry.0 += 1;
                    entry.1 += qty * price;
                }
            }
        }
        expected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disjoint_tasks_cover_every_order_once_with_nine_lines() {
        let plan = Plan { orders: 100, tasks: 7, contended: false };
        assert_eq!(plan.total_commands(), 1000);
        let expected = plan.expected();
        assert_eq!(expected.len(), 100);
        assert!(expected.values().all(|(lines, _)| *lines == LINES_PER_ORDER));
    }

    #[test]
    fn contended_tasks_rotate_over_sixteen_orders() {
        let plan = Plan { orders: 10_000, tasks: 64, contended: true };
        assert_eq!(plan.total_commands(), 16 + 64 * 160);
        let expected = plan.expected();
        assert_eq!(expected.len(), 16);
        assert!(expected.values().all(|(lines, total)| *lines == 640 && *total == 640 * 100));
    }
}
