"""What a person reads: the summary table and the figures. Imports ``core``, ``store``, ``plan``; never a job."""
