"""Operations: health, readiness, metrics, drain and status endpoints, canary, process services."""
