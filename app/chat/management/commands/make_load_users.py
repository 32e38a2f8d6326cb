"""Create the load-test users load0001..loadNNNN (idempotent, one bulk insert)."""

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import check_password, make_password
from django.core.management.base import BaseCommand

from app.realtime.consumers.handshake import user_key
from app.realtime.layer.generations import bump_on_commit


class Command(BaseCommand):
    """Create N users <prefix>0001.. sharing one password, hashed once for all of them."""

    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument("count", type=int, help="how many users (load0001..loadNNNN)")
        parser.add_argument("--password", default="chanfleet")
        parser.add_argument("--prefix", default="load")

    def handle(self, *args, count, password, prefix, **options):
        """Insert the missing users, reset the password of existing ones if it differs."""
        users = get_user_model().objects
        names = [f"{prefix}{i:04d}" for i in range(1, count + 1)]
        existing = dict(users.filter(username__in=names).values_list("username", "password"))
        hashed = make_password(password)
        model = users.model
        users.bulk_create(
            [model(username=name, password=hashed) for name in names if name not in existing],
            batch_size=500, ignore_conflicts=True,
        )
        sample = next(iter(existing.values()), None)
        if sample is not None and not check_password(password, sample):
            changed = users.filter(username__in=list(existing))
            ids = list(changed.values_list("id", flat=True))
            changed.update(password=hashed)
            # .update() sends no post_save: the handshakes' cached users (their session
            # auth hash comes from the password) are invalidated here.
            bump_on_commit(*(user_key(uid) for uid in ids))
        self.stdout.write(f"{count - len(existing)} created, {len(existing)} existed")
