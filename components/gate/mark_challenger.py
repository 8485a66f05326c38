"""The mark-challenger step: a version the gate kept out gets the alias ``challenger`` and the gate's headline.

The champion stays; the new version stays registered (its scores are stored, so a later run can still compare
with it) and carries the gate's headline (compare's one-line decision) as the reason it was not promoted, the tag
``llmft.rejected_reason``.

    python -m components.gate.mark_challenger --config configs/local.yaml --kfp-run-id RUN --model-version 3 \\
        --headline "keep-champion: held-out loss +0.0% vs champion v1"

Exit codes: 0 marked, 1 the version does not exist or the registry failed, 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import json

from components.common.cli import cli_config, fail, new_parser
from components.common.logs import configure_step_logging
from components.common.pipeline_runs import step_run
from components.common.run_data import set_run_tags
from components.common.tags import MODEL_VERSION_TAG, REJECTED_REASON_TAG
from components.gate.registry import CHALLENGER, mark_challenger
from configs.errors import StepError
from configs.loading import config_from_json

STEP = "mark-challenger"


def run_step(config: str, kfp_run_id: str, model_version: str, headline: str) -> tuple[str]:
    """A version that is not promoted: give it the alias ``challenger`` and record why, the gate's ``headline``
    (the champion stays).

    Reads mlflow (tracking URI, experiment, registered_model_name).

    Returns:
        ``("challenger",)``.

    Raises:
        ConfigError: the config parameter is invalid.
        RegistryError: the model version does not exist.
        TrackingUnavailable: the MLflow server does not answer.
    """
    configure_step_logging(STEP)
    cfg = config_from_json(config)
    with step_run(cfg, kfp_run_id, STEP) as (client, run_id):
        mark_challenger(client, cfg.mlflow.registered_model_name, model_version, headline)
        set_run_tags(client, run_id, {MODEL_VERSION_TAG: str(model_version), REJECTED_REASON_TAG: headline})
    print(json.dumps({"registered_model": cfg.mlflow.registered_model_name, "challenger": str(model_version),
                      "headline": headline}))
    return (CHALLENGER,)


def build_parser() -> argparse.ArgumentParser:
    """The command line: mark a registered version challenger."""
    parser = new_parser("components.gate.mark_challenger", "Give a registered version the alias challenger.")
    parser.add_argument("--kfp-run-id", required=True, help="Pipeline run id (for the MLflow child run).")
    parser.add_argument("--model-version", required=True, help="Registry version number, e.g. 3.")
    parser.add_argument("--headline", required=True, help="Why it was not promoted: the gate's headline.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Mark the version; 0 done, 1 failed, 2 usage or config error."""
    configure_step_logging(STEP)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        run_step(cli_config(parser, args).model_dump_json(), args.kfp_run_id, args.model_version, args.headline)
    except StepError as exc:
        return fail(parser, exc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
