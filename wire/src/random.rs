//! Random tasks as the exercise makes them: add or mul, a and b in [0, 40).

use crate::planner::NewTask;
use rand::Rng;

pub fn generate(count: usize) -> Vec<NewTask> {
    let mut rng = rand::rng();
    (0..count)
        .map(|_| NewTask {
            op: if rng.random_bool(0.5) { "add" } else { "mul" }.into(),
            args: vec![rng.random_range(0..40), rng.random_range(0..40)],
            ..NewTask::default()
        })
        .collect()
}
