"""The data-set registry: where each shared data set comes from and how to verify it.

For every set in ``shared/data`` it records the source repository, the commit, each file's
path in that repository, its size and sha256, and the licence, as written in the set's
``PROVENANCE.md`` (the llmrouter_nq ``LICENSE`` checksum was taken from the copied file, as
its provenance note gives none). These are data on purpose: a user elsewhere fetches the same
commit and checks the same bytes with :func:`verify`.

CLI: ``expertgate data list``, ``expertgate data fetch NAME|--all`` and
``expertgate data verify [NAME]``. :func:`fetch` downloads each file from its source
repository at the recorded commit (``$EXPERTGATE_DATA_SOURCE`` replaces the raw-file host, for
a mirror or a test server), checks size and sha256 before a file is put in place, and writes
into :func:`evals.datasets.data_dir`, where every command looks. A composed file (no source
path) is copied from the package (``evals/datasets/composed/``).

One rule names data for every command (:func:`resolve_table`): a registry name, optionally
with a part (``routellm:mmlu``, ``routellm:gsm8k``, ``llmrouter_nq``), or a path.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_SOURCE", "REGISTRY", "TABLES", "DataFile", "DataSet", "FetchError", "fetch",
           "get", "names", "raw_url", "resolve_table", "verify"]

#: where raw files of a GitHub repository at a commit are served (``$EXPERTGATE_DATA_SOURCE``
#: overrides it: ``{source}/{owner}/{repo}/{commit}/{path}``)
DEFAULT_SOURCE = "https://raw.githubusercontent.com"
_COMPOSED = Path(__file__).resolve().parent / "composed"


@dataclass(frozen=True, slots=True)
class DataFile:
    """One file: path in the local set folder, path in the source repository (None when the
    file was composed, not copied), size in bytes and sha256."""

    local: str
    source_path: str | None
    bytes: int
    sha256: str


@dataclass(frozen=True, slots=True)
class DataSet:
    name: str
    repo: str
    commit: str
    license: str
    files: tuple[DataFile, ...]


REGISTRY: tuple[DataSet, ...] = (
    DataSet(
        name='banking77',
        repo='https://github.com/PolyAI-LDN/task-specific-datasets',
        commit='57ec275d8078af65b7731c2a98be812d844a6d6b',
        license='Creative Commons Attribution 4.0 International (CC BY 4.0)',
        files=(
            DataFile('train.csv', 'banking_data/train.csv',
                     839073, 'b06e26ac675513959a63135f11b94ea7786ed02da65db93a5650d8838cbc664b'),
            DataFile('test.csv', 'banking_data/test.csv',
                     239961, 'd12d6e3bc4c3103966ae786dc435913c0c563dfa328f5a3646d0e62cfeeb474d'),
            DataFile('categories.json', 'banking_data/categories.json',
                     2036, '53261da888122daf2d120d925458631d9619e15d82e56052e7a42e535ce32b63'),
            DataFile('LICENSE', 'LICENSE',
                     18650, '7e7170e3cebf88a9f60c7b8421418323c09304da1af4d5e90f4da1dc1c8a2661'),
        ),
    ),
    DataSet(
        name='clinc150',
        repo='https://github.com/clinc/oos-eval',
        commit='828f8093932c8fe6ca7936c3d2e52903b1c523de',
        license='Creative Commons Attribution 3.0 Unported (CC BY 3.0)',
        files=(
            DataFile('data_full.json', 'data/data_full.json',
                     2495390, '36923c3705a59e08fe9c3883d8bc2dd966ef93e22cb78ac41171782a698d56e0'),
            DataFile('domains.json', 'data/domains.json',
                     3818, 'b947b579d3b8e74b06f93b01083d8efaff2888b43a3e362533bd88a6e1211b3a'),
            DataFile('LICENSE', 'LICENSE',
                     19467, 'e6bc9e9c474700b708f568bac9e5a8a9bcb2b1dad53442f5ba449fcb848b8e76'),
        ),
    ),
    DataSet(
        name='hatecheck',
        repo='https://github.com/paul-rottger/hatecheck-data',
        commit='d84302298ceeb34f4b0dde2d8a1f4932c2caa612',
        license='Creative Commons Attribution 4.0 International (CC BY 4.0)',
        files=(
            DataFile('test_suite_cases.csv', 'test_suite_cases.csv',
                     664630, 'ecf0dc1e93fccc90b6f880e632b19e635c0f0a68b3157915a9e20b6938f121cf'),
            DataFile('LICENSE', 'LICENSE',
                     18656, '9e5f1b3c610b9c2da5c313bf81d577a7d1acec686bdb0384edefa6df0f90cd94'),
        ),
    ),
    DataSet(
        name='llmrouter_nq',
        repo='https://github.com/ulab-uiuc/LLMRouter',
        commit='54997c8648e77e7f2f36062bbbee2037eddcaa98',
        license='MIT',
        files=(
            DataFile('router_train_data_nq.json', 'llmrouter/data/nq/router_train_data_nq.json',
                     1609657, '1858a8af81162b279e4eba5195284fd20fcd8dfcf32a0a6dc96ded627ed47ed2'),
            DataFile('LICENSE', 'LICENSE',
                     1068, '905c5b3e88f78dc96ed4d0b8ec1c0a20fbb3122988b7d992be64d751836ecc92'),
        ),
    ),
    DataSet(
        name='routellm',
        repo='https://github.com/lm-sys/RouteLLM',
        commit='0b64fdafe049e596a3f5657c219329f24af24198',
        license='Apache License 2.0',
        files=(
            DataFile('mmlu/responses/mmlu_abstract_algebra.csv',
                     'routellm/evals/mmlu/responses/mmlu_abstract_algebra.csv',
                     20003, '67e564eea42e71fbfcaf616972df952c316e5538376da1c16d691177458b96b9'),
            DataFile('mmlu/responses/mmlu_anatomy.csv',
                     'routellm/evals/mmlu/responses/mmlu_anatomy.csv',
                     33922, '53ebea8257805eeecc25713728264b8235cffad7b720962a3eafc92fd27ef537'),
            DataFile('mmlu/responses/mmlu_astronomy.csv',
                     'routellm/evals/mmlu/responses/mmlu_astronomy.csv',
                     47647, '49915ece9dfe8aadbd351f221ada2ea86b6f832ce49fa64d1622a0f066c19794'),
            DataFile('mmlu/responses/mmlu_business_ethics.csv',
                     'routellm/evals/mmlu/responses/mmlu_business_ethics.csv',
                     33854, '13a45bed754ffe8f0e7f0348e69085c648a1ae0e91aa76cd5e6906fa45f7ec8e'),
            DataFile('mmlu/responses/mmlu_clinical_knowledge.csv',
                     'routellm/evals/mmlu/responses/mmlu_clinical_knowledge.csv',
                     64226, '5ea37709bfbad4df7a3fcbd8973413f7645a2adfef9772490f09d3f293ffe882'),
            DataFile('mmlu/responses/mmlu_college_biology.csv',
                     'routellm/evals/mmlu/responses/mmlu_college_biology.csv',
                     49612, 'c38620db5b9f6f1b0fde7bc8d8299b8e2305c4dacbb1567c904cd51618d627d5'),
            DataFile('mmlu/responses/mmlu_college_chemistry.csv',
                     'routellm/evals/mmlu/responses/mmlu_college_chemistry.csv',
                     25362, '78ca6ba22ff25c8fdb93e1c6e84384e72522106c73ed5ee9fed620928ce395ce'),
            DataFile('mmlu/responses/mmlu_college_computer_science.csv',
                     'routellm/evals/mmlu/responses/mmlu_college_computer_science.csv',
                     43299, '8a7b2a87a36b428c9d1a8f12ce3b01cf7920f0a7146d6f8a111da6749c332da3'),
            DataFile('mmlu/responses/mmlu_college_mathematics.csv',
                     'routellm/evals/mmlu/responses/mmlu_college_mathematics.csv',
                     25385, '3f22f42779c48509c66e21d7d1fc3054eb0256c1b5b772bb6d9a3af1b253238b'),
            DataFile('mmlu/responses/mmlu_college_medicine.csv',
                     'routellm/evals/mmlu/responses/mmlu_college_medicine.csv',
                     83407, '63d71d29e630fc6538e1705a51f4267bdbbdea0fa7ee85056ad7d6f8f10d3987'),
            DataFile('mmlu/responses/mmlu_college_physics.csv',
                     'routellm/evals/mmlu/responses/mmlu_college_physics.csv',
                     30851, '8162a0660d4ef7b963088e0a176d4b8630096127a0d0b5ed003f649cbad34455'),
            DataFile('mmlu/responses/mmlu_computer_security.csv',
                     'routellm/evals/mmlu/responses/mmlu_computer_security.csv',
                     27712, '26446faf7460f03aa2d82a05c170faedb5cbf6d7bdda133b1146229107097d1c'),
            DataFile('mmlu/responses/mmlu_conceptual_physics.csv',
                     'routellm/evals/mmlu/responses/mmlu_conceptual_physics.csv',
                     42034, 'ea40473704b64cb60d564ffe91962848ec6fc3106b40089d08cebc98d5c7226d'),
            DataFile('mmlu/responses/mmlu_econometrics.csv',
                     'routellm/evals/mmlu/responses/mmlu_econometrics.csv',
                     47278, '927b4d877cec8697f3b8378bb7e7c7a279babaea2edacf350ea50908701907b9'),
            DataFile('mmlu/responses/mmlu_electrical_engineering.csv',
                     'routellm/evals/mmlu/responses/mmlu_electrical_engineering.csv',
                     26003, 'de2fb7c2e9addb4808f5b3f7c79efbfdfb86216235bb7dc28ab70bc53664f11e'),
            DataFile('mmlu/responses/mmlu_elementary_mathematics.csv',
                     'routellm/evals/mmlu/responses/mmlu_elementary_mathematics.csv',
                     72419, '88697ff0d238b5852c7a959379dc8b0b45c3554ed4b2ee7cbb7ffc34e06c7cf5'),
            DataFile('mmlu/responses/mmlu_formal_logic.csv',
                     'routellm/evals/mmlu/responses/mmlu_formal_logic.csv',
                     50588, '094a462626468569ad595c03e66e73a299188cfa175248b499dba94e005506e6'),
            DataFile('mmlu/responses/mmlu_global_facts.csv',
                     'routellm/evals/mmlu/responses/mmlu_global_facts.csv',
                     19055, '6f75ddf7d6eb94ac0471529a85ff7f8b738c9f4055185b3114eed26393222d06'),
            DataFile('mmlu/responses/mmlu_high_school_biology.csv',
                     'routellm/evals/mmlu/responses/mmlu_high_school_biology.csv',
                     111417, '444982fc2c750ab8cbc6942a0c0267040aa5023c1d2364247d20e2a28b4e325d'),
            DataFile('mmlu/responses/mmlu_high_school_chemistry.csv',
                     'routellm/evals/mmlu/responses/mmlu_high_school_chemistry.csv',
                     59694, 'ae5e62479365dcd056354c568f60da65b1df9f1de57dda3953a8e9933a6f12e4'),
            DataFile('mmlu/responses/mmlu_high_school_computer_science.csv',
                     'routellm/evals/mmlu/responses/mmlu_high_school_computer_science.csv',
                     45133, 'd156d9448a6e899f7f976a0afac148a928bf709a2baa573f0c407854a25bdb11'),
            DataFile('mmlu/responses/mmlu_high_school_european_history.csv',
                     'routellm/evals/mmlu/responses/mmlu_high_school_european_history.csv',
                     271527, 'c64afd6c5e30ef0cd5c10beab961ac05e7ba55d6b48cd93bf6ad0a45f90515bf'),
            DataFile('mmlu/responses/mmlu_high_school_geography.csv',
                     'routellm/evals/mmlu/responses/mmlu_high_school_geography.csv',
                     43125, '21b12044be4a6b9813880ad46372006dc0846e7f85fa46883bb73dbd90fba30a'),
            DataFile('mmlu/responses/mmlu_high_school_government_and_politics.csv',
                     'routellm/evals/mmlu/responses/mmlu_high_school_government_and_politics.csv',
                     67164, '2791689acc61775a5857f4f3a5fd248d30552553c3a96f6ee63dc28285437259'),
            DataFile('mmlu/responses/mmlu_high_school_macroeconomics.csv',
                     'routellm/evals/mmlu/responses/mmlu_high_school_macroeconomics.csv',
                     119896, '73b931a2a06ba74a5c9f1e005d45a25004e36be5d075d98f8ebcf89b3fda367b'),
            DataFile('mmlu/responses/mmlu_high_school_mathematics.csv',
                     'routellm/evals/mmlu/responses/mmlu_high_school_mathematics.csv',
                     56703, '151b2a736981b7b20f3bad99de6a573e4692d68cf87020e943b601b70bb37390'),
            DataFile('mmlu/responses/mmlu_high_school_microeconomics.csv',
                     'routellm/evals/mmlu/responses/mmlu_high_school_microeconomics.csv',
                     77019, 'f7ea151efb4c9d96374db3358ac7e97e4d8349e26715f61dac98bc9d854ca046'),
            DataFile('mmlu/responses/mmlu_high_school_physics.csv',
                     'routellm/evals/mmlu/responses/mmlu_high_school_physics.csv',
                     60489, '1e2103fc8f7f1cfac7c00952b26db2418acab092486af78a9c51c551ae2ff9be'),
            DataFile('mmlu/responses/mmlu_high_school_psychology.csv',
                     'routellm/evals/mmlu/responses/mmlu_high_school_psychology.csv',
                     162370, 'd11604f2c7a2425258d5b9a285ef71737c011cc3a91456890f088a0ee4c55212'),
            DataFile('mmlu/responses/mmlu_high_school_statistics.csv',
                     'routellm/evals/mmlu/responses/mmlu_high_school_statistics.csv',
                     112040, 'de6642bcd93d7a80e7bbd73d987a44d67b6e537b47749ddc518122fd582703bb'),
            DataFile('mmlu/responses/mmlu_high_school_us_history.csv',
                     'routellm/evals/mmlu/responses/mmlu_high_school_us_history.csv',
                     298464, 'a71186d143363e203b2f216d78c9d21f10cca51de455ef176c9c01b77f546592'),
            DataFile('mmlu/responses/mmlu_high_school_world_history.csv',
                     'routellm/evals/mmlu/responses/mmlu_high_school_world_history.csv',
                     380424, 'e9c52305977dc37b3e48eee727ad933b2d24d96ca3a06aec865a8900b1e87d2c'),
            DataFile('mmlu/responses/mmlu_human_aging.csv',
                     'routellm/evals/mmlu/responses/mmlu_human_aging.csv',
                     47361, '0d6c4109b4f61f138781ce50bbc60ff2e90dd451694d3926a088be5a5bd88aa8'),
            DataFile('mmlu/responses/mmlu_human_sexuality.csv',
                     'routellm/evals/mmlu/responses/mmlu_human_sexuality.csv',
                     32866, '20916037e3012731883f926738daf47ed994f74ba25518fdb7f0df72a81143fd'),
            DataFile('mmlu/responses/mmlu_international_law.csv',
                     'routellm/evals/mmlu/responses/mmlu_international_law.csv',
                     54224, 'e389b886e3e1570bfdf798f6f56dc3c675350200c5baf0f41a0766294ff312eb'),
            DataFile('mmlu/responses/mmlu_jurisprudence.csv',
                     'routellm/evals/mmlu/responses/mmlu_jurisprudence.csv',
                     34614, '7e94c3849231be7b2654db11e44ee51531f8474e300fe83b1e05438df3038f0b'),
            DataFile('mmlu/responses/mmlu_logical_fallacies.csv',
                     'routellm/evals/mmlu/responses/mmlu_logical_fallacies.csv',
                     51102, 'fa2d94cd2e901621aaebd0a7e64560b5dbbe4249086795398533eed2561c0c1e'),
            DataFile('mmlu/responses/mmlu_machine_learning.csv',
                     'routellm/evals/mmlu/responses/mmlu_machine_learning.csv',
                     34575, '9301e928481be6e20b3541e1ac112b25a4a71338b21592978c0d219cb6240020'),
            DataFile('mmlu/responses/mmlu_management.csv',
                     'routellm/evals/mmlu/responses/mmlu_management.csv',
                     20594, 'a00b12ab0265918f9335a85ce02303ddaea0491a7b099f88a05986eeac4aa4fb'),
            DataFile('mmlu/responses/mmlu_marketing.csv',
                     'routellm/evals/mmlu/responses/mmlu_marketing.csv',
                     64281, '3ee0b6560ebe0eb4f14ce63227d6f6ec8cb8b6e57e345eae9460be742672f36c'),
            DataFile('mmlu/responses/mmlu_medical_genetics.csv',
                     'routellm/evals/mmlu/responses/mmlu_medical_genetics.csv',
                     21444, '7c830f87dcbc0029137b3400cf361931831cb57dda55717a64e72ad74663d5df'),
            DataFile('mmlu/responses/mmlu_miscellaneous.csv',
                     'routellm/evals/mmlu/responses/mmlu_miscellaneous.csv',
                     151860, 'c2e1a5b0394a8429f55b6340e1865166ac17ec6b3571523005e413b3b2843b9f'),
            DataFile('mmlu/responses/mmlu_moral_disputes.csv',
                     'routellm/evals/mmlu/responses/mmlu_moral_disputes.csv',
                     109870, '8b2b973b1987b724f39fd10970604d7f1150747a0db9ce766c193bd978c9d0c4'),
            DataFile('mmlu/responses/mmlu_moral_scenarios.csv',
                     'routellm/evals/mmlu/responses/mmlu_moral_scenarios.csv',
                     379235, '78ded6fdca1cd0d5c4ed16a5ed4aebf2e98401b9c00b20e565e6cce5bf1153c7'),
            DataFile('mmlu/responses/mmlu_nutrition.csv',
                     'routellm/evals/mmlu/responses/mmlu_nutrition.csv',
                     94113, 'ba197fbf4b6c5034414d66ea7747211056cf5f709f83d919d2d856245720cc51'),
            DataFile('mmlu/responses/mmlu_philosophy.csv',
                     'routellm/evals/mmlu/responses/mmlu_philosophy.csv',
                     81836, '2f30ad01ab529ddea00dff4ff87e950fef838a78754c94f6884120628a7d0591'),
            DataFile('mmlu/responses/mmlu_prehistory.csv',
                     'routellm/evals/mmlu/responses/mmlu_prehistory.csv',
                     91362, 'afc816d4b78814627bae9b8c3730a9bb72bd958ff6259fd36c981777cfe83753'),
            DataFile('mmlu/responses/mmlu_professional_accounting.csv',
                     'routellm/evals/mmlu/responses/mmlu_professional_accounting.csv',
                     126233, 'fe5ee976a625832ecf624086103619523d063a3a728c60681b6a53c55b638a37'),
            DataFile('mmlu/responses/mmlu_professional_law.csv',
                     'routellm/evals/mmlu/responses/mmlu_professional_law.csv',
                     1902501, '60a4308df4f481ff8840590b29061835207b50a9f06a9fc68baf12b114f7e2e0'),
            DataFile('mmlu/responses/mmlu_professional_medicine.csv',
                     'routellm/evals/mmlu/responses/mmlu_professional_medicine.csv',
                     219104, '6fda30b523e4e2ce8b1f18e871a0722190a4ac81ec377a75fbba4a63e0b510f7'),
            DataFile('mmlu/responses/mmlu_professional_psychology.csv',
                     'routellm/evals/mmlu/responses/mmlu_professional_psychology.csv',
                     229411, 'bfb3a7fb653e2b195d3fa258894af64d3f1c3dbd4059c1e0feb728131d20f9b3'),
            DataFile('mmlu/responses/mmlu_public_relations.csv',
                     'routellm/evals/mmlu/responses/mmlu_public_relations.csv',
                     29421, '2196279ea2535fbda62509c3156209b764459a3d515a9ba84b69cf16bb4c27d0'),
            DataFile('mmlu/responses/mmlu_security_studies.csv',
                     'routellm/evals/mmlu/responses/mmlu_security_studies.csv',
                     206239, '1354bb17649f95b7dd8ef3179e22329abe6bef84e639d63370ae9e80b2509905'),
            DataFile('mmlu/responses/mmlu_sociology.csv',
                     'routellm/evals/mmlu/responses/mmlu_sociology.csv',
                     67343, '903ba6259b13f2877607abef22b7b19cb575104268d4ced615e3129d3caafb47'),
            DataFile('mmlu/responses/mmlu_us_foreign_policy.csv',
                     'routellm/evals/mmlu/responses/mmlu_us_foreign_policy.csv',
                     29024, 'f1c1d266753a3f161e2018c16c6948fb78c7f5e506a10b4fc0441049962a6c69'),
            DataFile('mmlu/responses/mmlu_virology.csv',
                     'routellm/evals/mmlu/responses/mmlu_virology.csv',
                     39794, 'd525f1ba88982befd42140e73822fe940e73db82bbdcdd569d95f26c3dd41e68'),
            DataFile('mmlu/responses/mmlu_world_religions.csv',
                     'routellm/evals/mmlu/responses/mmlu_world_religions.csv',
                     26268, '49dc00d44e069ecaac6a7f7e2188f4a8bce5df56ee91bb15f55519d07f64af8e'),
            DataFile('mmlu/contaminated_prompts.jsonl',
                     'routellm/evals/mmlu/contaminated_prompts.jsonl',
                     4498, '9606c968198eabf5efa46ccba31286392c8e35525d83c86661618ffc5ec6d40e'),
            DataFile('gsm8k/gsm8k_responses.csv', 'routellm/evals/gsm8k/gsm8k_responses.csv',
                     1291062, '1f38ed03db354a020f71e92022383dc3cf37bbf2694dea4daaeea7b6c43fe57b'),
            DataFile('gsm8k/contaminated_prompts.jsonl',
                     'routellm/evals/gsm8k/contaminated_prompts.jsonl',
                     6282, '1f5a7be02148ee0f7f306d233ba76a6573c826cee9499a34f8ef938a1a84c234'),
            DataFile('mt_bench/judgements.jsonl', 'routellm/evals/mt_bench/judgements.jsonl',
                     1417551, 'ffd1d44e7af835c810d35ebd420b88a47acd8aac850f46b149b9889964ae4478'),
            DataFile('mt_bench/question.jsonl', 'routellm/evals/mt_bench/question.jsonl',
                     48929, '119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7'),
            DataFile('mt_bench/contaminated_prompts.jsonl',
                     'routellm/evals/mt_bench/contaminated_prompts.jsonl',
                     2694, 'a77356ecd7cab6ba9bfb6d7b91c512f83aee4f82309934387a6cdfb915882109'),
            DataFile('benchmarks/mt-bench/gpt-4_single.jsonl',
                     'benchmarks/mt-bench/gpt-4_single.jsonl',
                     1291533, '891e597c31754228e6d52a88a1fc1946e8ef66cf6caa1a8ef33206fb02f483c3'),
            DataFile('benchmarks/mt-bench/martian.jsonl', 'benchmarks/mt-bench/martian.jsonl',
                     174023, 'e0bba32ddb332ffb05edf4ae0b6f4b780948faaa7c0279da2a7c06222511d86b'),
            DataFile('benchmarks/mt-bench/unify.jsonl', 'benchmarks/mt-bench/unify.jsonl',
                     243281, '8c991046cda4e50d00eff985997433fd8fed90957e8be0f7c1e1ac7be37a4de9'),
            DataFile('LICENSE', 'LICENSE',
                     11356, '43070e2d4e532684de521b885f385d0841030efa2b1a20bafb76133a5e1379c1'),
        ),
    ),
    DataSet(
        name='webquestions',
        repo='https://github.com/brmson/dataset-factoid-webquestions',
        commit='668890853388010fe6ae9a5eb035a7917b88933b',
        license="Creative Commons Attribution 4.0 International (CC BY 4.0); "
                "LICENSE composed from the README's statement",
        files=(
            DataFile('test.json', 'main/test.json',
                     274219, 'de320953700cd08300b9bcd2e60399da43b458a1be02db3f93c40344729fed39'),
            DataFile('trainmodel.json', 'main/trainmodel.json',
                     377322, 'eef8b21e5b65697b643f3904c4f1122f077a8afdf3dc91a2058d3cf7d34baa50'),
            DataFile('val.json', 'main/val.json',
                     102028, 'eece8cddb324972d55bae4ac05eb06d728bc6e4111585509391efcff5c29e063'),
            DataFile('devtest.json', 'main/devtest.json',
                     25148, '2541838645f7b8a6f24c4f409f12568b1616095f2edb6280eec924ea3df123c8'),
            DataFile('LICENSE', None,
                     19933, '572f34126523df6d8b3cd9c3d88368687010d305ab65872e2351f4e9393307b9'),
        ),
    ),
)


def names() -> list[str]:
    return [d.name for d in REGISTRY]


def get(name: str, registry: Sequence[DataSet] | None = None) -> DataSet:
    reg = REGISTRY if registry is None else registry
    for d in reg:
        if d.name == name:
            return d
    raise KeyError(f"unknown data set {name!r}; known: {', '.join(d.name for d in reg)}")


def raw_url(ds: DataSet, f: DataFile, source: str | None = None) -> str | None:
    """Download address of a file at the recorded commit, or None if composed.

    ``source`` (default ``$EXPERTGATE_DATA_SOURCE`` or :data:`DEFAULT_SOURCE`) is the host
    serving raw files as ``{source}/{owner}/{repo}/{commit}/{path}``.
    """
    if f.source_path is None or not ds.repo.startswith("https://github.com/"):
        return None
    base = (source or os.environ.get("EXPERTGATE_DATA_SOURCE") or DEFAULT_SOURCE).rstrip("/")
    slug = ds.repo.removeprefix("https://github.com/").rstrip("/")
    return f"{base}/{slug}/{ds.commit}/{f.source_path}"


class FetchError(RuntimeError):
    """A file could not be downloaded, or its bytes are not the recorded ones."""


def _download(url: str, dest: Path, f: DataFile, timeout_s: float,
              on_bytes: Callable[[int], None]) -> None:
    """Stream ``url`` to a temporary file beside ``dest``; move it into place only when its
    size and sha256 are the recorded ones (a partial or wrong file is never left behind)."""
    tmp = dest.with_name(dest.name + ".part")
    h = hashlib.sha256()
    size = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r, open(tmp, "wb") as out:
            while chunk := r.read(1 << 16):
                out.write(chunk)
                h.update(chunk)
                size += len(chunk)
                on_bytes(len(chunk))
    except urllib.error.HTTPError as e:
        tmp.unlink(missing_ok=True)
        raise FetchError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        tmp.unlink(missing_ok=True)
        raise FetchError(f"{url}: {getattr(e, 'reason', e)}") from None
    if size != f.bytes or h.hexdigest() != f.sha256:
        tmp.unlink(missing_ok=True)
        raise FetchError(f"{url}: got {size} bytes with sha256 {h.hexdigest()[:12]}..., the "
                         f"registry records {f.bytes} bytes, {f.sha256[:12]}...: not placed")
    os.replace(tmp, dest)


def fetch(name: str, root: str | Path | None = None, *, source: str | None = None,
          timeout_s: float = 60.0, progress: bool = False,
          registry: Sequence[DataSet] | None = None) -> list[str]:
    """Download set ``name`` into ``root/name`` (default :func:`evals.datasets.data_dir`).

    Files already there with the recorded sha256 are kept. Returns one line per file
    (``fetched``, ``kept``, ``composed``); raises :class:`FetchError` on the first file that
    cannot be fetched or does not match (files fetched before it stay, each verified).
    """
    if root is None:
        from evals.datasets import data_dir

        root = data_dir()
    ds = get(name, registry)
    folder = Path(root) / ds.name
    todo: list[tuple[DataFile, Path]] = []
    lines: list[str] = []
    for f in ds.files:
        dest = folder / f.local
        if dest.is_file() and dest.stat().st_size == f.bytes and _sha256(dest) == f.sha256:
            lines.append(f"kept     {ds.name}/{f.local}")
        else:
            todo.append((f, dest))
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=sum(f.bytes for f, _ in todo), unit="B", unit_scale=True,
                   desc=f"fetch {ds.name}", file=sys.stderr, leave=False)
    try:
        for f, dest in todo:
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise FetchError(f"cannot write into {dest.parent}: {e.strerror or e} (set "
                                 "EXPERTGATE_DATA_DIR or pass --root)") from None
            url = raw_url(ds, f, source)
            if url is None:
                packaged = _COMPOSED / ds.name / f.local
                if not packaged.is_file() or _sha256(packaged) != f.sha256:
                    raise FetchError(f"{ds.name}/{f.local}: composed file, not in the package")
                shutil.copyfile(packaged, dest)
                lines.append(f"composed {ds.name}/{f.local}")
            else:
                _download(url, dest, f, timeout_s, bar.update if bar is not None else _noop)
                lines.append(f"fetched  {ds.name}/{f.local} ({f.bytes} bytes, sha256 ok)")
    finally:
        if bar is not None:
            bar.close()
    return lines


def _noop(n: int) -> None:
    pass


#: registry names usable as routing tables: name[:part] -> (set, table format)
TABLES: dict[str, tuple[str, str]] = {
    "routellm": ("routellm", "routellm-mmlu"),
    "routellm:mmlu": ("routellm", "routellm-mmlu"),
    "routellm:gsm8k": ("routellm", "routellm-gsm8k"),
    "llmrouter_nq": ("llmrouter_nq", "llmrouter"),
}


def resolve_table(spec: str | Path, fmt: str | None = None,
                  root: str | Path | None = None) -> tuple[Path, str]:
    """The one rule for ``--data``: an existing path (format ``fmt``, default ``long``), or a
    registry name (:data:`TABLES`: ``routellm:mmlu``...) read from the data folder, its format
    implied. Raises ``KeyError`` with what to do when neither."""
    p = Path(spec)
    if p.exists():
        # "routellm" alone means its MMLU part: say so, never pick a part silently
        return p, "routellm-mmlu" if fmt == "routellm" else (fmt or "long")
    key = str(spec)
    if key in TABLES:
        set_name, implied = TABLES[key]
        if root is None:
            from evals.datasets import data_dir

            root = data_dir()
        folder = Path(root) / set_name
        if not folder.is_dir():
            raise KeyError(f"data set {set_name!r} is not in {root}: run "
                           f"`expertgate data fetch {set_name}` (or set EXPERTGATE_DATA_DIR)")
        if fmt is not None and fmt != implied and not (implied.startswith("routellm")
                                                       and fmt == "routellm"):
            raise KeyError(f"--data {key} is a {implied} table; --format {fmt} contradicts it")
        return folder, implied
    raise KeyError(f"--data {key!r}: no such file or folder, and not a registry table name "
                   f"({', '.join(TABLES)}; `expertgate data list`)")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(name: str, root: str | Path | None = None) -> list[str]:
    """Problems with the local copy of set ``name`` (missing, wrong size, wrong sha256).

    ``root`` is the folder holding the sets (default :func:`evals.datasets.data_dir`). An
    empty list means every file is byte-identical to the registry's record.
    """
    if root is None:
        from evals.datasets import data_dir

        root = data_dir()
    ds = get(name)
    folder = Path(root) / ds.name
    if not folder.is_dir():
        return [f"{ds.name}: folder {folder} is missing"]
    problems = []
    for f in ds.files:
        p = folder / f.local
        if not p.is_file():
            problems.append(f"{ds.name}/{f.local}: missing")
            continue
        size = p.stat().st_size
        if size != f.bytes:
            problems.append(f"{ds.name}/{f.local}: {size} bytes, expected {f.bytes}")
            continue
        digest = _sha256(p)
        if digest != f.sha256:
            problems.append(f"{ds.name}/{f.local}: sha256 {digest[:12]}..., expected "
                            f"{f.sha256[:12]}...")
    return problems
