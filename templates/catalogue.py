"""The templates the service ships, in one place: their names, what they need, which carry a link, and
the IAM events that notify by default. Pure data, imported by config and worker alike (it imports nothing
of the project).

Every name here has a text and an HTML template beside this file (templates/text/<name>.txt.j2,
templates/html/<name>.html.j2); tests/test_templates.py holds the files and this catalogue to each other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Template:
    name: str
    required: tuple[str, ...]  # context variables the template needs (a missing one: dead letter `template`)
    optional: tuple[str, ...] = ()
    link: bool = False  # the mail carries a link with a lifetime: by default the job expires with it


_LINK = ("realm_name", "link_expiration")
_EVENT_REQUIRED = ("user", "event")

# IAM event types (Keycloak's names) whose notice is sent unless a realm chooses its own list.
DEFAULT_NOTIFY_EVENTS = (
    "LOGIN_ERROR",
    "UPDATE_PASSWORD",
    "UPDATE_TOTP",
    "REMOVE_TOTP",
    "UPDATE_CREDENTIAL",
    "REMOVE_CREDENTIAL",
)


def event_template(event_type: str) -> str:
    """The template of an IAM event's notice: LOGIN_ERROR -> event-login_error."""
    return f"event-{event_type.lower()}"


CATALOGUE: dict[str, Template] = {
    template.name: template
    for template in (
        Template("email-verification", ("user", "link"), _LINK, link=True),
        Template("password-reset", ("user", "link"), _LINK, link=True),
        Template("execute-actions", ("user", "link", "required_actions"), _LINK, link=True),
        Template("email-update-confirmation", ("user", "link", "new_email"), _LINK, link=True),
        Template(
            "identity-provider-link",
            ("user", "link", "identity_provider"),
            (*_LINK, "identity_provider_username"),
            link=True,
        ),
        Template("email-test", (), ("realm_name", "user")),
        *(
            Template(event_template(event), _EVENT_REQUIRED, ("realm_name",))
            for event in DEFAULT_NOTIFY_EVENTS
        ),
        Template("notice", ("notice",), ("realm_name", "user")),
    )
}

TEMPLATE_NAMES = tuple(CATALOGUE)
LINK_TEMPLATES = frozenset(name for name, template in CATALOGUE.items() if template.link)
