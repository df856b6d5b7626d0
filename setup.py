from configparser import ConfigParser
import setuptools, shlex

# note: all settings are in settings.ini; edit there, not here
config = ConfigParser(delimiters=['='])
config.read('settings.ini', encoding='utf-8')
cfg = config['DEFAULT']

cfg_keys = 'version description keywords author author_email'.split()
expected = cfg_keys + "lib_name user branch license status min_python audience language git_url doc_host doc_baseurl".split()
for o in expected: assert o in cfg, "missing expected setting: {}".format(o)
setup_cfg = {o:cfg[o] for o in cfg_keys}

licenses = {   # settings.ini's license names -> (SPDX identifier, trove classifier)
    'apache2': ('Apache-2.0', 'License :: OSI Approved :: Apache Software License'),
    'mit': ('MIT', 'License :: OSI Approved :: MIT License'),
    'bsd3': ('BSD-3-Clause', 'License :: OSI Approved :: BSD License'),
}
statuses = {1: 'Planning', 2: 'Pre-Alpha', 3: 'Alpha', 4: 'Beta', 5: 'Production/Stable', 6: 'Mature', 7: 'Inactive'}
status = int(cfg['status'])
assert status in statuses, f"settings.ini: status must be one of {sorted(statuses)} (trove 'Development Status' numbers), got {status}"
assert cfg['license'] in licenses, f"settings.ini: license must be one of {sorted(licenses)}, got {cfg['license']!r}"
lic, lic_classifier = licenses[cfg['license']]
py_versions = '3.10 3.11 3.12 3.13'.split()

requirements = shlex.split(cfg.get('requirements', ''))
min_python = cfg['min_python']
fid_requirements = (cfg.get('fid_requirements') or '').split()
course_requirements = (cfg.get('course_requirements') or '').split()
dev_requirements = course_requirements + (cfg.get('dev_requirements') or '').split() + fid_requirements

setuptools.setup(
    name = cfg['lib_name'],
    license = lic,
    classifiers = [
        f'Development Status :: {status} - {statuses[status]}',
        'Intended Audience :: ' + cfg['audience'].title(),
        lic_classifier,
        'Natural Language :: ' + cfg['language'].title(),
    ] + ['Programming Language :: Python :: '+o for o in py_versions[py_versions.index(min_python):]],
    url = cfg['git_url'],
    project_urls = {'Documentation': cfg['doc_host'] + cfg['doc_baseurl'], 'Source': cfg['git_url'], 'Issues': cfg['git_url'] + '/issues'},
    packages = setuptools.find_packages(include=[cfg['lib_name'], cfg['lib_name'] + '.*']),
    package_data = {cfg['lib_name']: cfg.get('package_data', '').split()},
    install_requires = requirements,
    extras_require={'course': course_requirements, 'dev': dev_requirements, 'fid': fid_requirements},
    python_requires  = '>=' + cfg['min_python'],
    long_description = open('README.md', encoding='utf-8').read(),
    long_description_content_type = 'text/markdown',
    zip_safe = False,
    entry_points = {
        'console_scripts': cfg.get('console_scripts','').split(),
        'nbdev': [f'{cfg.get("lib_path")}={cfg.get("lib_path")}._modidx:d']
    },
    **setup_cfg)
