"""The linear relational embedding itself: estimators (each returns W and b), the operator (the one place β·W s + b is formed), β fitting, and the estimation bundle."""
