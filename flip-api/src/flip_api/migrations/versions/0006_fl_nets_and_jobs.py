"""FL nets (one FL server and its control API each) and the training jobs queued and run on them.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 18:14:51.449243
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # fl_backend and model_status were created by 0005; only fl_net_status is new.
    op.create_table('fl_nets',
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('backend', postgresql.ENUM('FLOWER', 'NVFLARE', name='fl_backend', create_type=False), nullable=False),
    sa.Column('endpoint', sa.String(length=500), nullable=False),
    sa.Column('status', sa.Enum('AVAILABLE', 'BUSY', 'DISABLED', name='fl_net_status'), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_fl_nets'))
    )
    op.create_index('uq_fl_nets_name', 'fl_nets', [sa.literal_column('lower(name)')], unique=True)
    op.create_table('fl_jobs',
    sa.Column('model_id', sa.Uuid(), nullable=False),
    sa.Column('project_id', sa.Uuid(), nullable=False),
    sa.Column('backend', postgresql.ENUM('FLOWER', 'NVFLARE', name='fl_backend', create_type=False), nullable=False),
    sa.Column('status', postgresql.ENUM('PENDING', 'QUEUED', 'PREPARING', 'RUNNING', 'RESULTS_UPLOADED', 'ERROR', 'STOPPED', 'RESULTS_UPLOAD_FAILED', name='model_status', create_type=False), nullable=False),
    sa.Column('trust_ids', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('config', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('net_id', sa.Uuid(), nullable=True),
    sa.Column('run_id', sa.String(length=100), nullable=True),
    sa.Column('bundle_sha256', sa.String(length=64), nullable=True),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('created_by', sa.Uuid(), nullable=True),
    sa.Column('queued_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('log_tail', sa.Text(), nullable=True),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['created_by'], ['users.id'], name=op.f('fk_fl_jobs_created_by_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_fl_jobs_model_id_models'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['net_id'], ['fl_nets.id'], name=op.f('fk_fl_jobs_net_id_fl_nets'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_fl_jobs_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_fl_jobs'))
    )
    op.create_index(op.f('ix_fl_jobs_model_id'), 'fl_jobs', ['model_id'], unique=False)
    op.create_index('ix_fl_jobs_queue', 'fl_jobs', ['backend', 'queued_at'], unique=False, postgresql_where=sa.text("status = 'QUEUED'"))


def downgrade() -> None:
    op.drop_index('ix_fl_jobs_queue', table_name='fl_jobs', postgresql_where=sa.text("status = 'QUEUED'"))
    op.drop_index(op.f('ix_fl_jobs_model_id'), table_name='fl_jobs')
    op.drop_table('fl_jobs')
    op.drop_index('uq_fl_nets_name', table_name='fl_nets')
    op.drop_table('fl_nets')
    sa.Enum(name='fl_net_status').drop(op.get_bind(), checkfirst=True)
