"""The per-version HTML report (`build.build_report`), its sections and plots."""
