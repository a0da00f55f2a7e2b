//! Retry budgets (being written).
