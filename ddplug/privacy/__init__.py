"""What a synthetic set reveals of its real data: a leakage report, and differential
privacy for the distillers that can be made private (distribution matching)."""

from ddplug.privacy.dp import PrivateClassMeans, calibrate_noise, clip_rows, epsilon_spent
from ddplug.privacy.leakage import LeakageReport, leakage_report, membership_advantage, nearest_similarity

__all__ = ["LeakageReport", "PrivateClassMeans", "calibrate_noise", "clip_rows", "epsilon_spent", "leakage_report",
           "membership_advantage", "nearest_similarity"]
