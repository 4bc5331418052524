"""Which address a reset invites: newEmail, the address the guest was found by, mail, the only otherMails entry."""

from __future__ import annotations

import pytest

from shared.platform.errors import PolicyRefusedError
from shared.reset.contract import validate_request
from shared.reset.policy import choose_target
from tests.factories import GUEST_ID, guest


def test_new_email_wins_over_everything() -> None:
    """newEmail is the address the guest will redeem with, whatever the user holds."""
    target = choose_target(validate_request({"userId": GUEST_ID, "newEmail": "adele@new.example"}), guest())
    assert target == "adele@new.example"


def test_the_address_the_guest_was_found_by_when_the_guest_holds_it() -> None:
    """A request by an otherMails address invites that address, not mail."""
    user = guest(other_mails=("adele.vance@contoso.com", "adele@tailspin.example"))
    assert choose_target(validate_request({"email": "ADELE@tailspin.example"}), user) == "ADELE@tailspin.example"


def test_a_found_by_address_the_guest_no_longer_holds_falls_back_to_mail() -> None:
    """An index that lagged behind may find a guest by an address it has dropped: mail is used then."""
    user = guest(other_mails=("adele.vance@contoso.com",))
    assert choose_target(validate_request({"email": "gone@tailspin.example"}), user) == "adele.vance@contoso.com"


def test_mail_when_the_request_names_the_user_by_id() -> None:
    assert choose_target(validate_request({"userId": GUEST_ID}), guest()) == "adele.vance@contoso.com"


def test_the_only_other_mails_entry_when_mail_is_empty() -> None:
    """A guest created while a contact held its address has no mail: its one otherMails entry is used."""
    user = guest(mail=None, other_mails=("nora@litware.example", "NORA@litware.example"))
    assert choose_target(validate_request({"userId": GUEST_ID}), user) == "nora@litware.example"


def test_several_other_mails_and_no_mail_is_refused_with_a_clear_code() -> None:
    """Two candidate addresses are not guessed between: the caller must say which."""
    user = guest(mail=None, other_mails=("otto@litware.example", "otto.t@tailspin.example"))
    with pytest.raises(PolicyRefusedError) as refused:
        choose_target(validate_request({"userId": GUEST_ID}), user)
    assert refused.value.code == "AmbiguousTargetEmail"
    assert "newEmail" in refused.value.message and "email" in refused.value.message


def test_no_address_at_all_is_refused() -> None:
    with pytest.raises(PolicyRefusedError) as refused:
        choose_target(validate_request({"userId": GUEST_ID}), guest(mail=None, other_mails=()))
    assert refused.value.code == "NoEmailOnUser"
