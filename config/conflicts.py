"""When a save is refused: someone saved meanwhile, or a draft is pending that the saver did not see.

`save_conflict` is the rule (a pure decision, tested as a table); the messages name what is pending
(field: old -> new, secrets masked) and how to go on.
"""

from __future__ import annotations

from config.edits import Change, describe_changes

DRAFT_GONE = "draft-gone"
DRAFT_CHANGED = "draft-changed"
DRAFT_UNSEEN = "draft-unseen"


def save_conflict(
    pending: str | None, reviewed: str | None, *, gives_changes: bool, draft_differs: bool
) -> str | None:
    """Whether a save must be refused because of the realm's draft; None: it may go on.

    `pending`: the id of the pending draft (None: there is none); `reviewed`: the draft id the caller
    names (what it showed its user); `gives_changes`: the save carries field changes of its own;
    `draft_differs`: the draft differs from the saved settings.

    A save applies its changes onto the draft when there is one, so a caller that did not start from that
    draft would save someone else's pending edits without seeing them (a new host under a new password).
    It may go on only when it names the draft it reviewed, or gives no changes at all (it saves the
    draft as is, and the changes are shown), or the draft changes nothing.
    """
    if pending is None:
        return DRAFT_GONE if reviewed is not None else None
    if reviewed is not None:
        return None if reviewed == pending else DRAFT_CHANGED
    if gives_changes and draft_differs:
        return DRAFT_UNSEEN
    return None


def conflict_message(realm: str, edit_version: int, current: int) -> str:
    return (
        f"realm {realm}: the settings were saved by someone else since this edit started "
        f"(edit from version {edit_version}, now version {current}); run `mailworker settings show "
        f"--realm {realm}`, re-apply your change and save again"
    )


def draft_conflict_message(
    realm: str,
    reason: str,
    pending_id: str | None,
    base_version: int | None,
    pending: list[Change],
    reviewed: str | None,
) -> str:
    if reason == DRAFT_GONE or pending_id is None:
        return (
            f"realm {realm}: draft {reviewed} is no longer pending (saved or discarded meanwhile); run "
            f"`mailworker settings show --realm {realm}` and save again"
        )
    what = describe_changes(pending)
    since = f"edited from version {base_version}" if base_version else "nothing saved yet"
    show = f"`mailworker settings show --realm {realm} --draft`"
    fix = (
        f"save it with `mailworker settings save --realm {realm} --draft {pending_id}` (your options "
        f"may be added), or discard it with `mailworker settings revert --realm {realm}`"
    )
    if reason == DRAFT_CHANGED:
        return (
            f"realm {realm}: the draft changed since you reviewed it (you named draft {reviewed}, pending is "
            f"draft {pending_id}, {since}): {what}; look at it again ({show}), then {fix}"
        )
    return (
        f"realm {realm}: a draft is pending (draft {pending_id}, {since}) and this save would include "
        f"its changes: {what}; look at it ({show}), then {fix} and save again"
    )
