"""Moves parameters and buffers between torch and paddle twins by rules, accounting for every tensor."""

from weight_transfer.rules import RULES, Rule, rule_for
from weight_transfer.slots import Slot
from weight_transfer.transfer import TransferReport, canonical_key, transfer

__all__ = ["RULES", "Rule", "Slot", "TransferReport", "canonical_key", "rule_for", "transfer"]
