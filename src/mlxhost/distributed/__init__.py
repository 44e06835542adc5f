"""Several ranks as one server: launch, the leader and followers, the group link, sharding."""
