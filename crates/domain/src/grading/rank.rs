//! Ranks over the graded population, the building block of RFM scores and percent ranks.

use std::cmp::Ordering;

/// `rank_min` of every value: the 1-based rank in ascending order, ties given the lowest rank of
/// their group (SQL `RANK()`, pandas `rank(method="min")`). `ranks[i]` belongs to `values[i]`.
pub fn rank_min<T, F>(values: &[T], cmp: F) -> Vec<u32>
where
    F: Fn(&T, &T) -> Ordering,
{
    let mut order: Vec<u32> = (0..values.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| cmp(&values[a as usize], &values[b as usize]));
    let mut ranks = vec![0u32; values.len()];
    let mut group_rank = 1u32;
    for (position, window_end) in order.iter().enumerate() {
        let i = *window_end as usize;
        if position > 0 {
            let prev = order[position - 1] as usize;
            if cmp(&values[prev], &values[i]) != Ordering::Equal {
                group_rank = position as u32 + 1;
            }
        }
        ranks[i] = group_rank;
    }
    ranks
}

/// Quantile score with `k` buckets: `floor(k · (rank_min − 1) / N) + 1`, in 1..=k.
pub fn bucket_score(rank_min: u32, population: u32, k: u8) -> u8 {
    let n = u64::from(population.max(1));
    let score = u64::from(k) * u64::from(rank_min.saturating_sub(1)) / n + 1;
    // rank_min ≤ N keeps the score ≤ k; the min guards a caller's off-by-one.
    score.min(u64::from(k)) as u8
}

/// `percent_rank = (rank_min − 1) / (N − 1)`, and 1.0 when N = 1.
pub fn percent_rank(rank_min: u32, population: u32) -> f64 {
    if population <= 1 {
        1.0
    } else {
        f64::from(rank_min - 1) / f64::from(population - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_get_the_lowest_rank_of_their_group() {
        let ranks = rank_min(&[30, 10, 20, 10, 30], i32::cmp);
        assert_eq!(ranks, vec![4, 1, 3, 1, 4]);
    }

    #[test]
    fn all_equal_values_rank_first() {
        assert_eq!(rank_min(&[7, 7, 7], i32::cmp), vec![1, 1, 1]);
        assert_eq!(bucket_score(1, 3, 5), 1);
    }

    #[test]
    fn bucket_score_matches_the_formula() {
        // N = 10, k = 5: ranks 1-2 → 1, 3-4 → 2, …, 9-10 → 5.
        let scores: Vec<u8> = (1..=10).map(|r| bucket_score(r, 10, 5)).collect();
        assert_eq!(scores, vec![1, 1, 2, 2, 3, 3, 4, 4, 5, 5]);
        // N = 1: the single customer is in bucket 1.
        assert_eq!(bucket_score(1, 1, 5), 1);
        // N = 3: floor(5·0/3)+1 = 1, floor(5·1/3)+1 = 2, floor(5·2/3)+1 = 4.
        assert_eq!(
            (1..=3).map(|r| bucket_score(r, 3, 5)).collect::<Vec<_>>(),
            vec![1, 2, 4]
        );
    }

    #[test]
    fn percent_rank_spans_zero_to_one() {
        assert_eq!(percent_rank(1, 5), 0.0);
        assert_eq!(percent_rank(5, 5), 1.0);
        assert_eq!(percent_rank(3, 5), 0.5);
        assert_eq!(percent_rank(1, 1), 1.0);
    }
}
