"""The embedded synthetic face generator (`generator`) and its drawing operations (`render`)."""
