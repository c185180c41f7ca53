use super::*;
use crate::task::Controls;
use std::time::{Duration, Instant};
use wire::planner::Registration;

fn op(name: &str) -> wire::OpInfo {
    wire::OpInfo {
        name: name.into(),
        digest: format!("{name}-digest"),
        arity: 2,
        doc: String::new(),
    }
}

fn register(board: &mut Board, id: &str, ops: &[&str], slots: u32) {
    board
        .register(
            Registration {
                id: id.into(),
                url: format!("http://{id}"),
                ops: ops.iter().map(|o| op(o)).collect(),
                slots,
            },
            Instant::now(),
            Duration::from_secs(3),
        )
        .expect("a new id registers");
}

fn submit(board: &mut Board, id: TaskId, op: &str) {
    board.insert([Task::new(id, op.into(), vec![1, 2].into(), 0)]);
}

fn done(value: i64) -> Answer {
    Answer::Done {
        output: Output::Result(value),
        digest: Some("d".into()),
    }
}

#[test]
fn a_task_goes_to_the_most_specialized_free_worker() {
    let mut board = Board::new(3, 100);
    register(&mut board, "general", &["add", "mul"], 1);
    register(&mut board, "mul-only", &["mul"], 1);
    submit(&mut board, 1, "mul");
    let sent = board.pump(Instant::now());
    assert_eq!(sent.len(), 1);
    assert_eq!(&*sent[0].worker, "mul-only");
    assert_eq!(board.task(1).unwrap().digest.as_deref(), Some("mul-digest"));
}

#[test]
fn a_task_never_goes_to_a_worker_without_its_op_and_says_why_it_waits() {
    let mut board = Board::new(3, 100);
    register(&mut board, "adder", &["add"], 4);
    submit(&mut board, 1, "mul");
    assert!(board.pump(Instant::now()).is_empty());
    let view = board.view(1).unwrap();
    assert_eq!(view.status, TaskStatus::Queued);
    assert_eq!(
        view.waiting_for.as_deref(),
        Some("no live worker offers op `mul`")
    );
    register(&mut board, "muller", &["mul"], 1);
    let sent = board.pump(Instant::now());
    assert_eq!(&*sent[0].worker, "muller");
}

#[test]
fn slots_bound_the_tasks_in_flight_and_oldest_tasks_go_first() {
    let mut board = Board::new(3, 100);
    register(&mut board, "w", &["add", "mul"], 2);
    for id in 1..=5 {
        submit(&mut board, id, if id % 2 == 0 { "add" } else { "mul" });
    }
    let sent = board.pump(Instant::now());
    assert_eq!(sent.iter().map(|a| a.task).collect::<Vec<_>>(), vec![1, 2]);
    assert!(board.pump(Instant::now()).is_empty());
    board.settle(&sent[0], done(1));
    let next = board.pump(Instant::now());
    assert_eq!(next.iter().map(|a| a.task).collect::<Vec<_>>(), vec![3]);
}

#[test]
fn a_busy_answer_requeues_without_counting_an_attempt() {
    let mut board = Board::new(3, 100);
    register(&mut board, "w", &["add"], 1);
    submit(&mut board, 1, "add");
    let sent = board.pump(Instant::now());
    let effects = board.settle(&sent[0], Answer::Busy);
    assert!(effects.finished.is_empty());
    let task = board.task(1).unwrap();
    assert_eq!((task.status, task.attempts), (TaskStatus::Queued, 0));
}

#[test]
fn a_lost_task_is_retried_then_fails_with_the_reason_past_the_limit() {
    let mut board = Board::new(2, 100);
    for round in 0..2 {
        register(&mut board, "w", &["add"], 1);
        if round == 0 {
            submit(&mut board, 1, "add");
        }
        let sent = board.pump(Instant::now());
        assert_eq!(sent.len(), 1, "round {round}");
        let effects = board.settle(&sent[0], Answer::Lost("connection refused".into()));
        if round == 0 {
            assert!(effects.finished.is_empty());
            assert_eq!(board.task(1).unwrap().status, TaskStatus::Queued);
            assert!(
                board.workers().is_empty(),
                "an unreachable worker is dropped"
            );
        } else {
            let failed = &effects.finished[0];
            assert_eq!(failed.status, TaskStatus::Failed);
            let Some(Output::Error(message)) = &failed.output else {
                panic!("no error")
            };
            assert!(
                message.contains("gave up after 2 attempts")
                    && message.contains("connection refused"),
                "{message}"
            );
        }
    }
}

#[test]
fn a_late_answer_from_a_dropped_worker_is_not_recorded() {
    let mut board = Board::new(3, 100);
    register(&mut board, "slow", &["add"], 1);
    submit(&mut board, 1, "add");
    let first = board.pump(Instant::now()).remove(0);
    // Heartbeats stop: the worker is dropped and its task requeued.
    let (dead, _) = board.reap(
        Instant::now() + Duration::from_secs(10),
        Duration::from_secs(3),
    );
    assert_eq!(dead, vec!["slow".to_string()]);
    register(&mut board, "fast", &["add"], 1);
    let second = board.pump(Instant::now()).remove(0);
    assert_eq!(board.settle(&second, done(3)).finished.len(), 1);
    assert!(board.settle(&first, done(999)).finished.is_empty());
    assert_eq!(board.view(1).unwrap().result, Some(3));
    assert_eq!(board.view(1).unwrap().attempts, 2);
}

#[test]
fn a_legacy_worker_that_lacks_an_op_is_not_asked_again() {
    let mut board = Board::new(3, 100);
    board.register_legacy("old".into(), "http://old".into());
    submit(&mut board, 1, "mul");
    let sent = board.pump(Instant::now()).remove(0);
    board.settle(&sent, Answer::Lacks);
    assert!(board.pump(Instant::now()).is_empty());
    assert_eq!(board.workers()[0].lacks, vec!["mul".to_string()]);
    assert_eq!(board.task(1).unwrap().attempts, 0);
}

#[test]
fn queued_and_running_tasks_can_be_cancelled_and_a_running_ones_worker_is_interrupted() {
    let mut board = Board::new(3, 100);
    submit(&mut board, 1, "add");
    let effects = board.cancel(1).unwrap();
    assert_eq!(effects.finished[0].status, TaskStatus::Cancelled);
    assert!(effects.interrupts.is_empty());
    assert_eq!(
        board.cancel(1).unwrap_err(),
        CancelError::NotQueued(TaskStatus::Cancelled)
    );
    assert_eq!(board.cancel(7).unwrap_err(), CancelError::NotFound);
    assert_eq!(board.queued(), 0);

    register(&mut board, "w", &["add"], 1);
    submit(&mut board, 2, "add");
    submit(&mut board, 3, "add");
    let running = board.pump(Instant::now()).remove(0);
    let effects = board.cancel(2).unwrap();
    assert_eq!(effects.finished[0].status, TaskStatus::Cancelled);
    assert_eq!(effects.interrupts.len(), 1);
    assert_eq!(&*effects.interrupts[0].url, "http://w");
    // The slot is the worker's until it answers the dispatch (interrupted).
    assert!(board.pump(Instant::now()).is_empty());
    assert!(board.settle(&running, done(3)).finished.is_empty());
    assert_eq!(board.view(2).unwrap().status, TaskStatus::Cancelled);
    assert_eq!(board.pump(Instant::now())[0].task, 3);
}

#[test]
fn withdrawn_tasks_vanish_whatever_their_state_and_a_running_ones_answer_is_ignored() {
    let mut board = Board::new(3, 100);
    register(&mut board, "w", &["add"], 2);
    submit(&mut board, 1, "add");
    submit(&mut board, 2, "add");
    let out = board.pump(Instant::now());
    assert_eq!(out.len(), 2);
    board.settle(&out[0], done(3));
    // 1 done, 2 running, 3 queued (not pumped yet), 4 queued with no worker.
    submit(&mut board, 3, "add");
    submit(&mut board, 4, "sub");
    let effects = board.withdraw(&[1, 2, 3, 4]);
    for id in 1..=4 {
        assert!(board.view(id).is_none(), "task {id} is gone");
    }
    assert_eq!(board.queued(), 0);
    let counts = board.stats().by_status;
    assert!(counts.values().all(|n| *n == 0), "{counts:?}");
    let interrupted: Vec<TaskId> = effects.interrupts.iter().map(|i| i.task).collect();
    assert_eq!(interrupted, [2], "the running call is to be stopped");
    // Its late answer records nothing, and frees the slot.
    assert!(board.settle(&out[1], done(3)).finished.is_empty());
    assert!(board.view(2).is_none());
    submit(&mut board, 5, "add");
    submit(&mut board, 6, "add");
    assert_eq!(board.pump(Instant::now()).len(), 2, "both slots are free");
}

#[test]
fn deadlines_expire_queued_and_running_tasks_when_due() {
    let mut board = Board::new(3, 100);
    register(&mut board, "w", &["add"], 1);
    let task = |id, deadline| {
        Task::new(id, "add".into(), vec![1, 2].into(), 1000).with_controls(Controls {
            deadline_ms: Some(deadline),
            ..Controls::default()
        })
    };
    board.insert([task(1, 5000), task(2, 3000)]);
    let running = board.pump(Instant::now()).remove(0);
    assert_eq!(running.task, 1);
    assert_eq!(board.next_due_ms(), Some(3000));
    assert!(board.tick(2999).finished.is_empty());
    let effects = board.tick(3000);
    assert_eq!(effects.finished[0].id, 2);
    assert_eq!(effects.finished[0].status, TaskStatus::Expired);
    assert_eq!(board.queued(), 0);
    let effects = board.tick(6000);
    assert_eq!(effects.finished[0].status, TaskStatus::Expired);
    assert_eq!(
        effects.interrupts.len(),
        1,
        "the running one is interrupted"
    );
    assert_eq!(board.next_due_ms(), None);
    assert_eq!(board.stats().by_status["expired"], 2);
}

#[test]
fn an_op_failure_with_retries_left_runs_again_after_its_backoff() {
    let mut board = Board::new(3, 100);
    board.set_retry_backoff(1000, 60_000);
    register(&mut board, "w", &["add"], 1);
    board.insert([
        Task::new(1, "add".into(), vec![1, 2].into(), 0).with_controls(Controls {
            retries: 1,
            ..Controls::default()
        }),
    ]);
    let failed = || Answer::Done {
        output: Output::Error("overflow".into()),
        digest: None,
    };
    let first = board.pump(Instant::now()).remove(0);
    let effects = board.settle(&first, failed());
    assert!(effects.finished.is_empty());
    assert_eq!(effects.retried[0].retried, 1);
    let view = board.view(1).unwrap();
    assert_eq!(view.status, TaskStatus::Queued);
    assert_eq!(view.attempt_errors.len(), 1);
    assert!(view.waiting_for.unwrap().contains("retry 1 of 1"));
    // Not before its backoff.
    assert!(board.pump(Instant::now()).is_empty());
    let due = board.next_due_ms().unwrap();
    assert!(due >= view.attempt_errors[0].at_ms + 1000);
    assert_eq!(board.tick(due).requeued, [1]);
    let second = board.pump(Instant::now()).remove(0);
    let effects = board.settle(&second, failed());
    assert_eq!(
        effects.finished[0].status,
        TaskStatus::Failed,
        "no retries left"
    );
    assert_eq!(effects.finished[0].attempts, 2);
}

#[test]
fn worker_losses_count_apart_from_op_failures_retried() {
    let mut board = Board::new(1, 100);
    board.set_retry_backoff(0, 0);
    register(&mut board, "w", &["add"], 1);
    board.insert([
        Task::new(1, "add".into(), vec![1, 2].into(), 0).with_controls(Controls {
            retries: 2,
            ..Controls::default()
        }),
    ]);
    for _ in 0..2 {
        let sent = board.pump(Instant::now()).remove(0);
        let answer = Answer::Done {
            output: Output::Error("boom".into()),
            digest: None,
        };
        assert!(board.settle(&sent, answer).finished.is_empty());
        board.tick(u64::MAX);
    }
    let sent = board.pump(Instant::now()).remove(0);
    assert_eq!(board.settle(&sent, done(3)).finished[0].attempts, 3);
}

#[test]
fn a_deregistered_worker_finishes_its_task_and_then_is_forgotten() {
    let mut board = Board::new(3, 100);
    register(&mut board, "w", &["add"], 1);
    submit(&mut board, 1, "add");
    submit(&mut board, 2, "add");
    let sent = board.pump(Instant::now()).remove(0);
    board.deregister("w");
    assert_eq!(board.settle(&sent, done(3)).finished.len(), 1);
    assert!(board.workers().is_empty());
    assert!(board.pump(Instant::now()).is_empty());
}

#[test]
fn counts_follow_transitions_and_old_finished_tasks_leave_memory() {
    let mut board = Board::new(3, 2);
    register(&mut board, "w", &["add"], 10);
    for id in 1..=3 {
        submit(&mut board, id, "add");
    }
    for assignment in board.pump(Instant::now()) {
        board.settle(&assignment, done(3));
    }
    let stats = board.stats();
    assert_eq!(stats.by_status.get("done"), Some(&3));
    assert_eq!(stats.by_status.get("running"), Some(&0));
    assert!(
        board.task(1).is_none(),
        "the oldest finished task is evicted"
    );
    assert!(board.task(3).is_some());
}

#[test]
fn a_draining_worker_that_keeps_beating_is_not_reaped_before_its_task_answers() {
    let mut board = Board::new(3, 100);
    register(&mut board, "w", &["add"], 1);
    submit(&mut board, 1, "add");
    let sent = board.pump(Instant::now()).remove(0);
    board.deregister("w");
    // Still working on task 1: its heartbeats are accepted, so it stays.
    assert!(board.heartbeat("w"));
    let (dead, _) = board.reap(Instant::now(), Duration::from_secs(3));
    assert!(dead.is_empty());
    assert_eq!(board.settle(&sent, done(3)).finished.len(), 1);
    assert_eq!(board.view(1).unwrap().attempts, 1);
    // Forgotten once its last task answered: now it must not come back.
    assert!(!board.heartbeat("w"));
}

#[test]
fn a_requeued_task_forgets_the_digest_of_the_worker_that_lost_it() {
    let mut board = Board::new(3, 100);
    register(&mut board, "w", &["add"], 1);
    submit(&mut board, 1, "add");
    let sent = board.pump(Instant::now()).remove(0);
    assert!(board.view(1).unwrap().digest.is_some());
    board.settle(&sent, Answer::Lost("reset".into()));
    let view = board.view(1).unwrap();
    assert_eq!(view.status, TaskStatus::Queued);
    assert_eq!(view.digest, None);
}

#[test]
fn a_live_workers_id_cannot_be_taken_from_another_address() {
    let mut board = Board::new(3, 100);
    register(&mut board, "mul-1", &["mul"], 1);
    let hijack = Registration {
        id: "mul-1".into(),
        url: "http://attacker:8080".into(),
        ops: vec![op("mul")],
        slots: 1,
    };
    let timeout = Duration::from_secs(3);
    let refused = board.register(hijack.clone(), Instant::now(), timeout);
    assert!(refused.is_err());
    assert_eq!(board.workers()[0].url, "http://mul-1");
    // The same address refreshing its registration is fine.
    register(&mut board, "mul-1", &["mul"], 2);
    // Once the old worker stopped answering, the id is free again.
    let later = Instant::now() + Duration::from_secs(10);
    assert!(board.register(hijack, later, timeout).is_ok());
    assert_eq!(board.workers()[0].url, "http://attacker:8080");
}

/// The rule the per-op index must keep, as the full scan it replaced: the
/// worker offering `op` with free slots that offers the fewest ops, then has
/// the most free slots, then the lowest id.
fn reference_best<'a>(board: &'a Board, op: &str, now: Instant) -> Option<&'a str> {
    board
        .workers
        .values()
        .filter(|w| w.offers(op))
        .map(|w| (w, w.free_slots(now)))
        .filter(|(_, free)| *free > 0)
        .min_by(|(a, a_free), (b, b_free)| a.breadth().cmp(&b.breadth()).then(b_free.cmp(a_free)))
        .map(|(w, _)| &*w.id)
}

/// xorshift64*: reproducible boards without a seeded-RNG dependency.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

#[test]
fn the_indexed_choice_matches_the_full_scan_on_random_boards() {
    const OPS: [&str; 5] = ["add", "mul", "a", "b", "c"];
    for seed in 1..=40u64 {
        let mut dice = Dice(seed * 0x9E37_79B9_7F4A_7C15);
        let mut board = Board::new(3, 50);
        let start = Instant::now();
        let mut now = start;
        let mut sent: Vec<Assignment> = Vec::new();
        let mut next_task = 1;
        for step in 0..400 {
            let id = format!("w{}", dice.below(12));
            match dice.below(10) {
                0 => {
                    let ops: Vec<&str> =
                        OPS.iter().copied().filter(|_| dice.below(2) == 0).collect();
                    let slots = dice.below(4) as u32;
                    let _ = board.register(
                        Registration {
                            id: id.clone(),
                            url: format!("http://{id}"),
                            ops: ops.iter().map(|o| op(o)).collect(),
                            slots,
                        },
                        now,
                        Duration::from_secs(3),
                    );
                }
                1 => board.register_legacy(id.clone(), format!("http://{id}")),
                2 => {
                    board.deregister(&id);
                }
                3 => {
                    board.heartbeat(&id);
                }
                4 | 5 => {
                    let op = OPS[dice.below(5) as usize];
                    submit(&mut board, next_task, op);
                    next_task += 1;
                    let free: BTreeMap<String, u32> = board
                        .workers
                        .values()
                        .map(|w| (w.id.to_string(), w.free_slots(now)))
                        .collect();
                    // Alone in the queue, the new task takes the reference's pick.
                    let alone = board.queued() == 1;
                    let expected = reference_best(&board, op, now).map(str::to_string);
                    let assignments = board.pump(now);
                    if alone {
                        let assignment = assignments.first();
                        assert_eq!(assignment.map(|a| &*a.worker), expected.as_deref());
                    }
                    for (id, free) in free {
                        let taken = assignments.iter().filter(|a| *a.worker == *id).count();
                        assert!(
                            taken <= free as usize,
                            "{id}: {taken} tasks for {free} free slots"
                        );
                    }
                    sent.extend(assignments);
                }
                6 | 7 if !sent.is_empty() => {
                    let assignment = sent.swap_remove(dice.below(sent.len() as u64) as usize);
                    let answer = match dice.below(7) {
                        0 => Answer::Busy,
                        1 => Answer::Draining,
                        2 => Answer::Lacks,
                        3 => Answer::Unauthorized,
                        4 => Answer::Lost("cut".into()),
                        _ => done(1),
                    };
                    board.settle(&assignment, answer);
                    sent.extend(board.pump(now));
                }
                8 => now += Duration::from_millis(dice.below(40)),
                _ => {
                    board.reap(now, Duration::from_millis(dice.below(200) + 20));
                }
            }
            // Before and after re-ranking: who offers an op, from the index,
            // is who offers it by a full scan (each once).
            for _ in 0..2 {
                for op in OPS {
                    let mut indexed: Vec<&str> =
                        board.workers.offering(op).map(|w| &*w.id).collect();
                    indexed.sort_unstable();
                    let scanned: Vec<&str> = board
                        .workers
                        .values()
                        .filter(|w| w.offers(op))
                        .map(|w| &*w.id)
                        .collect();
                    assert_eq!(indexed, scanned, "seed {seed}, step {step}, op {op}");
                }
                board.workers.wake(now);
            }
            for op in OPS {
                assert_eq!(
                    board.workers.best(op).map(|w| &*w.id),
                    reference_best(&board, op, now),
                    "seed {seed}, step {step}, op {op}"
                );
            }
        }
    }
}

#[test]
fn ten_thousand_idle_workers_of_other_ops_are_never_reranked_by_dispatch() {
    let mut board = Board::new(3, 100);
    for n in 0..10_000 {
        register(
            &mut board,
            &format!("idle-{n:05}"),
            &["resize", "encode"],
            4,
        );
    }
    register(&mut board, "adder", &["add"], 4);
    register(&mut board, "general", &["add", "mul"], 4);
    board.pump(Instant::now());
    let before = board.workers.moves();
    let tasks = 1_000;
    let mut answered = 0;
    for id in 1..=tasks {
        submit(&mut board, id, "add");
        for assignment in board.pump(Instant::now()) {
            assert_ne!(
                &*assignment.worker, "general",
                "the specialist has a free slot"
            );
            board.settle(&assignment, done(3));
            answered += 1;
        }
    }
    assert_eq!(answered, tasks);
    // Each dispatch and each answer re-ranks only the adder: the 10,000
    // others are not touched however many tasks go through.
    let moved = board.workers.moves() - before;
    assert!(moved <= 2 * tasks, "{moved} re-rankings for {tasks} tasks");
    assert_eq!(
        board.stats().workers_by_flavor.get("encode+resize"),
        Some(&10_000)
    );
}
