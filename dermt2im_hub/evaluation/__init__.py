"""Stage 6: classifier benchmark (ViT-B/16, MobileNetV2; real-only vs hybrid), metrics, statistics, leaderboard."""
